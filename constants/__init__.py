"""Every number the validator uses, in one place.

Values follow the live coldint subnet (netuid 29); competitions.json may override the
per-competition ones (see validator/competitions.py).
"""

# --- chain -----------------------------------------------------------------------------
NETUID = 29
SUBNET_UIDS = 256
BLOCK_TIME_S = 12  # seconds per block on subtensor
BLOCKS_PER_EPOCH = 361  # the advantage decays once per epoch; sample seeds use epoch boundaries
WEIGHTS_VERSION_KEY = 4_000  # sent with every set_weights
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
HALL_OF_FAME_MAX_REWARD = 0.2  # cap on the summed hall-of-fame share of the weights
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
DB_EXTEND_INTERVAL_S = 6 * 3600
EVAL_SAMPLES = 1_500
RECHECK_FRACTION = 0.02
RECHECK_MAX = 10
RECHECK_TOLERANCE = 1e-3  # relative

# --- models on disk ----------------------------------------------------------------------
MODEL_SIZE_BYTES = 15 * 1024**3  # default competition size limit
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
COMPETITIONS_URL = "https://raw.githubusercontent.com/coldint/coldint_validator/main/competitions.json"
COMPETITIONS_REFRESH_S = 3600

# --- scoring engine ---------------------------------------------------------------------
TOKEN_BUDGET_GPU = 65_536  # tokens per forward batch on CUDA (halved on out-of-memory)
TOKEN_BUDGET_CPU = 8_192
LOSS_CHUNK_TOKENS = 4_096  # hidden-state rows per logsumexp chunk

# --- text source -------------------------------------------------------------------------
FINEWEB_REPO = "HuggingFaceFW/fineweb-edu-score-2"
LOCAL_CHAIN_DB = "chain.sqlite"
