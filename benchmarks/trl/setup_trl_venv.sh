#!/usr/bin/env bash
# Create .bench/trl/venv: CPU torch + HuggingFace TRL 1.0.0 (the last TRL release that still
# ships a PPO trainer, at trl.experimental.ppo) for the PPO baseline benchmark.
#
# Usage: bash benchmarks/trl/setup_trl_venv.sh [VENV_DIR]   (default .bench/trl/venv, relative to the current
# directory: run it from the repository root; PYTHON=python3.11 to override)
#
# Exact versions this was built and measured with (Python 3.11.7, CPU only):
#   torch==2.13.0+cpu   (from the local wheel dir; a plain `pip install torch` would pull a CUDA build)
#   trl==1.0.0          (trl 1.16 has no PPOTrainer any more)
#   transformers==5.23.0  <- the newest release at the time; trl 1.0.0 only asks transformers>=4.56.2
#                          and it worked unchanged with 5.23.0, so no older pin was needed
#   accelerate==1.15.0  datasets==5.2.0  tokenizers==0.23.3  safetensors==0.8.0
#   huggingface_hub==2.4.0  numpy==2.4.6  pandas==3.1.1  pyarrow==26.0.1
# The full `pip freeze` is pinned below as a constraints file, so a rerun resolves the same set.
set -euo pipefail

VENV="${1:-.bench/trl/venv}"
PY="${PYTHON:-python3}"

mkdir -p "$(dirname "$VENV")"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi

CONSTRAINTS="$(dirname "$VENV")/trl_constraints.txt"
cat > "$CONSTRAINTS" <<'EOF'
accelerate==1.15.0
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
click==8.5.1
datasets==5.2.0
dill==0.4.1
filelock==4.2.12
fsspec==2026.9.0
h11==0.16.0
hf-xet==1.8.0
httpcore2==2.16.2
httpx2==2.16.2
huggingface_hub==2.4.0
idna==3.20
Jinja2==3.1.6
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
mpmath==1.3.0
multiprocess==0.70.19
networkx==3.6.1
numpy==2.4.6
packaging==26.3
pandas==3.1.1
psutil==7.2.2
pyarrow==26.0.1
pydantic==2.14.3
pydantic_core==2.50.4
Pygments==2.21.0
python-dateutil==4.0.0
PyYAML==6.0.3
regex==2026.11.15
rich==15.0.0
safetensors==0.8.0
shellingham==1.5.4
sympy==1.14.0
tokenizers==0.23.3
tqdm==4.70.1
transformers==5.23.0
trl==1.0.0
truststore==0.10.5
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
tzdata==2026.6
xxhash==4.1.0
EOF

# torch first and pinned exactly (resolves to the local 2.13.0+cpu wheel), then the HF stack; both under the
# constraints, so torch's own dependencies (filelock, sympy, ...) get the pinned versions from the start.
"$VENV/bin/pip" install -c "$CONSTRAINTS" "torch==2.13.0"
"$VENV/bin/pip" install -c "$CONSTRAINTS" \
  "trl==1.0.0" "transformers==5.23.0" "accelerate==1.15.0" "datasets==5.2.0" \
  "tokenizers==0.23.3" "safetensors==0.8.0"

"$VENV/bin/python" - <<'EOF'
import os
os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
import torch, transformers, trl, accelerate, datasets
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: F401  (fails if the PPO trainer is missing)
assert torch.__version__.startswith("2.13.0"), torch.__version__
print("ok: torch", torch.__version__, "| trl", trl.__version__, "| transformers", transformers.__version__,
      "| accelerate", accelerate.__version__, "| datasets", datasets.__version__)
EOF
