"""`coldint-validator demo`: the local field of validator.demo.world, then validator steps on it."""
from __future__ import annotations

from pathlib import Path

from validator.cli.runlock import LockHeld, RunLock
from validator.cli.stopping import exit_status, graceful_loop_stop
from validator.demo.world import VALIDATOR_HOTKEY, build_demo


def run_demo(root: Path, steps: int = 2, eval_samples: int = 200) -> int:
    """Build the local field in `root` (a finished field there is reused) and run `steps`
    validator steps on it from a fresh validator state; weights are not set.

    One demo per dir (its state is wiped at start). Ctrl-C or SIGTERM: the first stops after
    the model in flight, a second at once; olah and any scoring worker are stopped either way
    (the `with` blocks unwind); the status is then 128 + the signal's number."""
    import shutil

    from validator.app import RunConfig, build_validator
    from validator.adapters.leaderboard import make_console, print_report
    from validator.adapters.hub.localhub import LocalHub
    from validator.preflight import SetupError

    console = make_console()
    root = Path(root).resolve()
    try:
        lock = RunLock(root).acquire()
    except LockHeld as e:
        raise SetupError(str(e)) from None
    with lock:
        mirror = root / "mirror"
        shutil.rmtree(root / "state", ignore_errors=True)
        with LocalHub(mirror) as hub:
            console.print(f"local hub (olah) at {hub.endpoint}, serving {mirror}")
            built = build_demo(root, console, hub.endpoint, mirror)
            config = RunConfig(network="local", chain_db=built["chain"], hotkey=VALIDATOR_HOTKEY,
                               competitions=str(built["competitions"]), benchmark=built["benchmark"],
                               state_dir=root / "state", endpoint=hub.endpoint, device="cpu",
                               eval_samples=eval_samples, offline=True, step_interval_s=0,
                               save_step_json=root / "last_step.json")
            validator = build_validator(config, console)
            stop = graceful_loop_stop(validator)
            for report in validator.run(steps):
                validator.progress.stop()
                print_report(report, console)
    if stop.first is not None:
        return exit_status(stop.first)
    console.print(f"\nre-render the last step with: coldint-validator leaderboard --state-dir {root / 'state'}")
    return 0
