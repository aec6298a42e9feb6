"""Every number the validator uses, in one place.

Values follow the live coldint subnet (netuid 29); competitions.json may override the
per-competition ones (see validator/core/competitions.py).
"""

# --- chain -----------------------------------------------------------------------------
NETUID = 29
SUBNET_UIDS = 256
BLOCK_TIME_S = 12  # seconds per block on subtensor
BLOCKS_PER_EPOCH = 361  # the advantage decays once per epoch; sample seeds use epoch boundaries
WEIGHTS_VERSION_KEY = 1_017  # sent with every set_weights: the live spec version (1.0.17, coldint_validator a5860df)
MIN_WEIGHT_SET_INTERVAL_BLOCKS = 100  # never set weights more often than this
CHAIN_TIMEOUT_S = 60

# --- win rule and weights (competition defaults) ---------------------------------------
ADVANTAGE_INITIAL = 0.004
ADVANTAGE_DECAY = 0.995  # per epoch
WEIGHT_SKEW_FACTOR = 1.2
POOL_SIZE = 7  # best models kept in a competition's pool
PEND_SIZE = 3  # newcomers evaluated alongside the pool
EMA_ALPHA = 0.5  # new_weights = alpha * step + (1 - alpha) * previous
HALL_OF_FAME_DECAY = 0.995  # per epoch
REWARDS_MAX_FRACTION = 1.0  # cap on the summed hall-of-fame share of the weights (live HEAD; 0.4 at v1.0.16)
WEIGHT_MIN_DISPLAY = 0.001

# --- samples and tokenization (competition defaults) -----------------------------------
MAX_SEQUENCE_LEN = 4096  # tokens
CAP_SAMPLE_LEN = 20_480  # characters; a longer text is cut at the last space before it
MAX_TOKENIZE_FAILS = 3
GROUP_SAMPLES = 1

# --- the sample database and the loss cache ---------------------------------------------
DB_MIN_SAMPLES = 2_000
DB_MAX_SAMPLES = 20_000
DB_EXTEND_SAMPLES = 500
DB_EXTEND_INTERVAL_S = 4 * 3600  # live db_extend_interval: 3600*4 seconds
EVAL_SAMPLES = 1_500
RECHECK_FRACTION = 0.02
RECHECK_MAX = 10
RECHECK_TOLERANCE = 1e-3  # relative

# --- models on disk ----------------------------------------------------------------------
DISK_MARGIN_BYTES = 2 * 1024**3  # free space kept beyond a download's size
MODEL_STORE_GRACE_S = 3600  # a snapshot younger than this is never cleaned up
HUB_TIMEOUT_S = 60
DOWNLOAD_RETRY_BACKOFF_S = (300, 900, 3600, 4 * 3600)  # transient failures, then stays at the last

# --- step timing ------------------------------------------------------------------------
TTL_MODEL_EVAL_S = 1_800  # one model's scoring in its worker
TTL_DOWNLOADS_S = 1_800  # all downloads of one step
STEP_MIN_INTERVAL_S = 60
REVISIT_PERIOD_S = 4 * 3600  # every uid is revisited within this wall-clock period
TOP_MINERS_TO_VISIT = 10  # by other validators' weights
COMPETITIONS_URL = "https://github.com/coldint/sn29/raw/main/competitions.json"  # as live
COMPETITIONS_REFRESH_S = 15 * 60  # live CFG_FETCH_INTERVAL

# --- scoring engine ---------------------------------------------------------------------
TOKEN_BUDGET_GPU = 65_536  # tokens per forward batch on CUDA (halved on out-of-memory)
TOKEN_BUDGET_CPU = 8_192
LOSS_CHUNK_TOKENS = 4_096  # hidden-state rows per logsumexp chunk

# --- text source -------------------------------------------------------------------------
FINEWEB_REPO = "HuggingFaceFW/fineweb-edu-score-2"
STATE_DIR_DEFAULT = ".coldint"  # state, caches, models, the local chain
LOCAL_CHAIN_DB = "chain.sqlite"  # the local chain file, inside the state dir

# --- data (validator/adapters/fineweb.py, data.py; validator/core/seeding.py) -------------------
FINEWEB_TIMEOUT_S = 120  # one shard read (ranged) or download (whole shard)
FINEWEB_RETRIES = 3  # attempts per shard read before giving up
FINEWEB_RETRY_BACKOFF_S = 2.0  # doubled after each failed attempt
ROWS_PER_PAGE = 25  # live default rows_per_page (competitions.json's default block sets 50)
FINEWEB_FOOTER_WORKERS = 8  # parquet footers of one dump read at once (row counts)

# --- validator/core/competitions.py, validator/adapters/chain/local.py, validator/cli/chain.py --------
COMPETITIONS_TIMEOUT_S = 30  # fetching competitions.json from a URL
COMPETITIONS_MAX_BYTES = 1_000_000  # a larger competitions.json is refused
CHAIN_DB_DEFAULT = f"{STATE_DIR_DEFAULT}/{LOCAL_CHAIN_DB}"  # `coldint-validator chain --chain-db` default
LOCAL_CHAIN_BUSY_TIMEOUT_S = 30  # SQLite waits this long for another process's write lock

# --- scoring (validator/scoring/job.py) ------------------------------------------------------
# Logits elements one loss chunk may hold: chunk rows = min(LOSS_CHUNK_TOKENS, this // vocab).
# On CPU 2**25 fp32 elements (128 MiB) keep peak memory low at a 128k vocab (256 rows).
LOSS_CHUNK_ELEMENTS_CPU = 1 << 25
LOSS_CHUNK_ELEMENTS_GPU = 1 << 30
# After a batched run the engine re-scores one sample with the reference path and falls back
# to the reference for the whole model when they disagree (a guard against a head it misreads).
ENGINE_VERIFY_MIN_TOKENS = 32  # the probe is the shortest sample at least this long
ENGINE_VERIFY_RTOL_FP32 = 1e-4
ENGINE_VERIFY_RTOL_LOWP = 2e-2  # bf16/fp16: batched vs single-sample kernels differ more
# Files whose content defines a tokenizer (hashed for the tokenization cache key).
# Also every name AutoTokenizer (transformers 4.44, as live) may fetch for a tokenizer: the
# download set's tokenizer files are among these, and fetch_tokenizer fetches these (exact names).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "sentencepiece.model", "spm.model", "bpe.codes", "emoji.json",
                   "normalizer.json", "entity_vocab.json", "vocab-src.json", "vocab-tgt.json", "prophetnet.tokenizer",
                   "word_shape.json", "word_pronunciation.json", "artists.json", "lyrics.json", "genres.json")

# --- hub (validator/adapters/hub/, scripts/upload_model.py) --------------
MODEL_LOCK_TIMEOUT_S = 1_800  # wait this long for another process downloading the same model
LOCAL_HUB_STARTUP_S = 30  # olah must answer on loopback within this
HUB_METADATA_RETRIES = 2  # extra tries of a metadata call that failed on the connection
MODEL_STORE_TMP_PREFIX = ".tmp-"  # downloads in progress, beside the snapshots they become
UPLOAD_CHAIN_READBACK_TRIES = 5  # upload_model: read the commitment back this many times
UPLOAD_CHAIN_READBACK_WAIT_S = 12  # ... waiting this long between reads (one block)
# A config.json is refused before the model is built on the meta device when it declares
# more than these (building costs ~1 ms and ~34 KB per layer: a config saying 10**7 layers
# would take hours and hundreds of GB). Real models: Llama 3 405B 126 layers, DeepSeek-V3
# 61 layers x 256 routed experts (15,616), Kimi K2 61 x 384 (23,424).
CONFIG_MAX_LAYERS = 1_024  # any int field counting layers/blocks (num_hidden_layers, n_layer, ...)
CONFIG_MAX_EXPERTS = 1_024  # any int field counting experts (num_local_experts, n_routed_experts, ...)
CONFIG_MAX_MODULE_BLOCKS = 65_536  # largest layer count x max(1, largest expert count)

# --- demo field (validator/demo/field.py): the embedded default's corpus, tokenizer, models ---
DEMO_MAX_DOCS = 4_000  # stdlib docstrings kept (train + eval)
DEMO_MIN_DOC_CHARS = 100  # shorter docstrings ("Return self==value.") are dropped
DEMO_MAX_DOC_CHARS = 2_000  # longer ones are cut at a space, keeping samples short on CPU
DEMO_EVAL_FRACTION = 0.1  # of the documents, held out in eval.jsonl
DEMO_VOCAB_SIZE = 2_048
DEMO_FIELD_STEPS = (0, 20, 60, 150)  # AdamW steps of each demo model
DEMO_WARMUP_STEPS = 10  # linear lr warm-up, then constant (snapshots equal separate runs)
DEMO_HIDDEN = 64
DEMO_LAYERS = 2
DEMO_HEADS = 4
DEMO_SEQ_LEN = 128
DEMO_BATCH = 16
DEMO_LR = 3e-3

# --- benchmark statistics and report (benchmark/stats.py, intervals.py, validator/adapters/htmlreport.py, report_plots.py) -----------
BENCH_BOOTSTRAP_RESAMPLES = 2_000  # percentile bootstrap over samples, default resamples
BENCH_BOOTSTRAP_MIN_RESAMPLES = 1_000  # fewer give CIs too noisy to act on; refused
BENCH_CONFIDENCE = 0.95  # two-sided confidence of every interval in the benchmark
BENCH_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000  # resampled indices held at once (bounds memory)
REPORT_LABEL_MAX_CHARS = 40  # longer model labels are cut in plots (the HTML table shows them whole)
REPORT_ANNOTATE_MAX_MODELS = 16  # numbers are written into win-matrix cells up to this many models
REPORT_DPI = 110

# --- benchmark command (benchmark/compare.py) -----------------------------------------------
BENCH_TOP_MODELS = 10  # field of `coldint-validator benchmark`: top uids per competition by incentive
BENCH_SEED = 0  # default seed of the benchmark's samples and bootstrap (same seed, same numbers)

# --- token cache (validator/scoring/job.py)
TOKEN_CACHE_MAX_ENTRIES = 60_000  # (tokenizer, sample) entries kept; ~3x the sample database
HUB_MAX_NETWORK_FAILURES_IN_A_ROW = 3  # then the hub is taken as down for the rest of the step

# --- consensus with the other validators (validator/core/consensus.py, validator/cli/consensus.py) ---
# Yuma's kappa: subtensor's default Kappa, the u16 32_767, read as kappa / u16::MAX (~0.5).
CONSENSUS_KAPPA = 32_767 / 65_535
# A validator whose last set_weights is older than this is inactive for the epoch (subtensor's
# default ActivityCutoff): its stake and weights leave the consensus.
CONSENSUS_ACTIVITY_CUTOFF_BLOCKS = 5_000
CONSENSUS_TOP_DIFFERENCES = 10  # uids listed where our weight differs most from consensus
CONSENSUS_MIN_DIFFERENCE = 1e-4  # smaller |ours - consensus| differences are not listed
CONSENSUS_VTRUST_WARN = 0.8  # estimated validator trust below this ...
CONSENSUS_WARN_STEPS = 2  # ... this many steps in a row -> a WARNING
CONSENSUS_HISTORY_STEPS = 100  # estimates a ConsensusWatch keeps
CONSENSUS_TABLE_VALIDATORS = 8  # validators shown in the console table (largest stake first)

# --- selection: which uids a step visits and evaluates (validator/core/selection.py; live v1.0.16) ---
PRIO_POOL = 100  # visit / evaluation priorities; a visited uid's priority adds a random r in [0, 1)
PRIO_TOP_MODEL = 80
PRIO_INJECT = 60
PRIO_NEW_MODEL = 40  # a pending uid below this leaves pending when a step does not pick it
PRIO_REVISIT = 20
CHAIN_UPDATE_INTERVAL_S = 16 * 60
TOP_MINER_VALIDATORS = 10  # the largest-stake permit holders whose weights name the top miners
TOP_MINER_MAX_VALIDATOR_IDLE_BLOCKS = 1_200  # a validator idle for longer is skipped
TOP_MINER_FRACTION = 0.05  # a miner holding more than this of such a validator's weight
TOP_MODEL_RETRY_INTERVAL_S = 24 * 3600  # an unchanged top miner is visited again after this
REVISIT_SLICE_PERIOD_S = 48 * 3600  # the wall clock sweeps the revisit slice over all uids in this
REVISIT_SLICE_MAX_UIDS = 10  # uids one chain update revisits at most
REVISIT_RETRY_INTERVAL_S = 24 * 3600  # a uid in the slice is visited when its last visit is older

# --- config sources (validator/adapters/config_source.py, competitions.py, halloffame.py; validator/core/candidates.py)
HALL_OF_FAME_URL = "https://github.com/coldint/sn29/raw/main/hall_of_fame.json"  # as live (HOF_URL)
HALL_OF_FAME_REFRESH_S = 15 * 60  # live re-reads both files every CFG_FETCH_INTERVAL
HALL_OF_FAME_TIMEOUT_S = 30
HALL_OF_FAME_MAX_BYTES = 1_000_000
CONFIG_MAX_DEPTH = 32  # JSON nesting refused beyond this, before parsing (the live files nest 3 deep)
CONFIG_MAX_ELEMENTS = 100_000  # JSON values (containers + items) refused beyond this
CONFIG_CACHE_DIR = "config"  # under the state dir: the last good copy of each fetched config
# validator-wide keys of competitions.json's "default" block: live constants.defaults where ours lack them
DISCARD_WINRATE = 0.02  # below this win rate and absolute win rate a commitment is discarded (0: never)
USE_EVAL_CACHE = True
BENCHMARK_MAX_BYTES = 1_000_000  # a larger benchmark.json is refused
BENCHMARK_NO_BLOCK = 2**31  # live's block of a benchmark entry without one (no advantage, sorted last)

# --- ranking and weights (validator/core/winrule.py, weights.py, halloffame.py): the live rules ----
MIN_WEIGHT_SET_INTERVAL_S = 35 * 60  # live HEAD: never set weights more often than this (wall clock)
HALL_OF_FAME_IV_FACTOR = 1 / (1 - HALL_OF_FAME_DECAY)  # ~200: an award's share at its block is reward / this

# --- hub: which files count, commitments (validator/adapters/hub/checks.py, validator/core/live_repo.py, identity, chain) ---
COMMITMENT_MAX_BYTES = 128  # one Raw field of the Commitments pallet; a longer commitment is refused
HUB_SMALL_FILE_MAX_BYTES = 16 * 1024**2  # config / tokenizer_config / safetensors index read before the weights
HUB_DOWNLOAD_WORKERS = 8  # files of one model fetched in parallel (huggingface_hub's snapshot default)

# --- tokenization as the live validator under transformers 4.44 (validator/scoring/tokens.py) ---------
TOKENIZER_JSON_MAX_BYTES = 64 * 1024**2  # a larger tokenizer.json is refused (common ones are 2-35 MB)

# --- hub: hostile repos (validator/adapters/hub/) ---------------------------------------------------
HUB_MAX_REPO_FILES = 1000  # a repo listing more files is refused (bad_repo) before any download
HUB_MAX_NAME_BYTES = 255  # a path component of a file to download longer than this is refused (NAME_MAX)

# --- persisted state: bounded reads (validator/adapters/files.py read_json) ----------------------------
STATE_MAX_BYTES = 512 * 1024**2  # validator_state.json, an eval cache file: larger is refused as damaged
STATE_MAX_DEPTH = 64  # JSON nesting of a state file (the eval cache nests 4 deep)
STATE_MAX_ELEMENTS = 40_000_000  # JSON values; 256 models x 20k samples x 3 fit

# --- scoring workers: limits and what a miner may not choose (validator/scoring/worker.py, worker_limits.py, dispatch.py, job.py) ---
SCORE_MEMORY_FRACTION = 0.8  # a scoring worker's resident memory limit: this share of the host's (or cgroup's) RAM
SCORE_ADDRESS_SPACE_HEADROOM_BYTES = 16 * 1024**3  # on CPU, RLIMIT_AS = that limit + this (torch, arenas, stacks)
TOKENIZE_TIME_SHARE = 0.25  # of the model's time limit (TTL_MODEL_EVAL_S): its own tokenizer's time box
# config.json keys that pick kernels, quantizers or parallel plans: removed before a model is built
# (here and, for the hub side, before checks), at every nesting level (sub-configs)
CONFIG_KEYS_STRIPPED = ("attn_implementation", "_attn_implementation", "_attn_implementation_internal",
                        "_attn_implementation_autoset", "experts_implementation", "_experts_implementation",
                        "_experts_implementation_internal", "quantization_config", "use_kernels", "kernel_config",
                        "tp_plan", "base_model_tp_plan", "base_model_pp_plan", "base_model_ep_plan",
                        "base_model_fsdp_plan", "distributed_config", "device_map")

# --- step report: shown text (validator/step/report.py) --------------------------------------------
PROBLEM_MAX_CHARS = 2_000  # a step problem is cut to this many characters (after escaping) before it is shown

# --- layer-streamed scoring (validator/scoring/streaming.py) -----------------------------------------
# Stream a model layer by layer when its weights exceed this share of the free device memory
# (or of --max-device-memory): the rest holds activations, the loss chunk and allocator slack.
STREAM_FREE_MEMORY_SHARE = 0.8

# --- hub: bounded repo JSON and the isolated config check (validator/adapters/hub/checks.py, config_check.py) ---
HUB_JSON_MAX_DEPTH = 32  # nesting of a repo's JSON files (config.json nests 3 deep; tokenizer_config 3)
HUB_JSON_MAX_ELEMENTS = 500_000  # JSON values of one repo file (an index of 100k tensors, 60k added tokens fit)
CONFIG_CHECK_TIMEOUT_S = 180  # the config build + meta-device model build, in its worker (about 5 s: imports)
CONFIG_CHECK_MEMORY_BYTES = 8 * 1024**3  # that worker's address space (RLIMIT_AS; torch's own mappings included)

# --- operator defaults (validator/cli/main.py `run`) ----------------------------------------------
MODEL_STORE_DEFAULT_FREE_GB = 50.0  # no --model-store-gb: the model store keeps this much of its disk free
