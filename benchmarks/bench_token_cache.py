"""Token cache (validator.scoring.token_cache.TokenCache): load / save time and peak RSS, this tree vs a git revision.

A synthetic cache of --entries entries x --tokens ids (vocabulary --vocab; ids uniform, or
Zipf-like with --dist zipf, which is closer to text and compresses better) is written in the
.npz layout both versions read. Each measurement runs in its own child process, so the peak
RSS (VmHWM) is that load alone; "base" is the child's RSS after its imports,
before the load. Each child then gets 10 entries, puts one new entry and saves (the scoring
worker's pattern), timing each.

    python benchmarks/bench_token_cache.py --entries 20000 --tokens 1000 --vocab 128256 --old HEAD

--compare-compression times np.savez vs np.savez_compressed on the same arrays (write to
memory, and load back), and prints the sizes.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peakmem import peak_rss_bytes  # benchmarks/, beside this script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    return peak_rss_bytes() / 2**20


def make_arrays(entries: int, tokens: int, vocab: int, dist: str, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = entries * tokens
    if dist == "zipf":
        ids = (rng.zipf(1.2, n) - 1) % vocab
    else:
        ids = rng.integers(0, vocab, n)
    ids = ids.astype(np.int32)
    tok_key = "A" * 44 + ":PreTrainedTokenizerFast"
    index = {f"{tok_key}|20480|4096|sample-{i:08d}": [f"{i:016x}", i * tokens, tokens, None, False]
             for i in range(entries)}
    return ids, np.frombuffer(json.dumps({"version": 2, "entries": index}).encode(), np.uint8)


def child(args) -> None:
    """One load (+ gets, put, save) with the TokenCache of `args.source` (a token_cache.py file)."""
    importlib.import_module("numpy")  # counted in the base RSS, as in the worker
    spec = importlib.util.spec_from_file_location("scoring_under_test", args.source)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (dataclasses look their module up)
    spec.loader.exec_module(mod)
    from types import SimpleNamespace

    comp = SimpleNamespace(cap_sample_len=20480, max_sequence_len=4096)
    tok_key = "A" * 44 + ":PreTrainedTokenizerFast"
    base = _rss_mb()
    t0 = time.perf_counter()
    cache = mod.TokenCache.load(args.path)
    t_load = time.perf_counter() - t0
    peak_load = _rss_mb()
    # The synthetic digests are f"{i:016x}": make the text its own digest so that gets hit.
    mod.TokenCache._digest = staticmethod(lambda text: text)
    t0 = time.perf_counter()
    hits = [cache.get(tok_key, comp, f"sample-{i:08d}", f"{i:016x}") for i in range(10)]
    assert all(h is not None and len(h.ids) == args.tokens for h in hits)
    t_get = time.perf_counter() - t0
    cache.put(tok_key, comp, "new-sample", "new", mod.TokenizedSample("new-sample", list(range(args.tokens)), None))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        cache.save(Path(d) / "out.npz")
        t_save = time.perf_counter() - t0
        size = (Path(d) / "out.npz").stat().st_size
    print(json.dumps({"label": args.label, "entries": len(cache), "load_s": round(t_load, 3),
                      "base_rss_mb": round(base, 1), "peak_rss_after_load_mb": round(peak_load, 1),
                      "load_rss_delta_mb": round(peak_load - base, 1), "get10_s": round(t_get, 4),
                      "save_s": round(t_save, 3), "peak_rss_mb": round(_rss_mb(), 1),
                      "file_mb": round(size / 2**20, 1)}))


def compare_compression(ids, index) -> None:
    import numpy as np

    for name, fn in (("savez", np.savez), ("savez_compressed", np.savez_compressed)):
        buf = io.BytesIO()
        t0 = time.perf_counter()
        fn(buf, ids=ids, index=index)
        t_save = time.perf_counter() - t0
        data = buf.getvalue()
        t0 = time.perf_counter()
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            back = f["ids"]
            f["index"]
        t_load = time.perf_counter() - t0
        assert np.array_equal(back, ids)
        print(json.dumps({"writer": name, "save_s": round(t_save, 3), "load_s": round(t_load, 3),
                          "mb": round(len(data) / 2**20, 1)}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=20_000)
    p.add_argument("--tokens", type=int, default=1_000)
    p.add_argument("--vocab", type=int, default=128_256)
    p.add_argument("--dist", choices=("uniform", "zipf"), default="uniform")
    p.add_argument("--old", default="HEAD",
                   help="git revision of validator/scoring/token_cache.py to compare ('' to skip)")
    p.add_argument("--compare-compression", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--label", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    import numpy as np

    ids, index = make_arrays(args.entries, args.tokens, args.vocab, args.dist)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cache.npz"
        np.savez(path, ids=ids, index=index)
        if args.compare_compression:
            compare_compression(ids, index)
        del ids, index
        sources = [("new", ROOT / "validator" / "scoring" / "token_cache.py")]
        if args.old:
            old = Path(d) / "scoring_old.py"
            old.write_bytes(subprocess.run(["git", "show", f"{args.old}:validator/scoring/token_cache.py"], cwd=ROOT,
                                           check=True, capture_output=True).stdout)
            sources.append((f"old ({args.old})", old))
        for label, source in sources:
            subprocess.run([sys.executable, __file__, "--child", "--source", str(source), "--path", str(path),
                            "--label", label, "--tokens", str(args.tokens)], check=True)


if __name__ == "__main__":
    main()
