#!/usr/bin/env bash
# One GPU check, under 5 minutes on one GPU; prints one table.
#
#   bash benchmarks/gpu_check.sh [--device auto|cuda|cuda:N|cpu] [--dry-run] [--out DIR]
#
# Rows: the suite's CUDA tests; compress_ of the 6-layer benchmark model (6 LRU, d_model 512,
# d_state 384) vs one training step on the device; LRU step times by d_state (bench_lru_step.py);
# the core's batched HSVs on the device vs CPU; `lti-reduce train --quick` on the device.
# Without CUDA, every row says so and runs on the CPU (smaller sizes) or is skipped; the script
# runs unchanged on both. Each step has its own time limit; full logs go to DIR (default: a temp dir).
# Environment: GPU_CHECK_DEVICE (as --device), PYTHON (default python).
set -u

DEVICE="${GPU_CHECK_DEVICE:-auto}"
DRY_RUN=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 1
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
mkdir -p "$OUT"

if [ "$DRY_RUN" = 1 ]; then
  CUDA="dry-run"
else
  CUDA="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null)"
fi
if [ "$DEVICE" = auto ]; then
  if [ -n "$CUDA" ] && [ "$CUDA" != dry-run ]; then DEVICE=cuda; else DEVICE=cpu; fi
fi
case "$DEVICE" in
  cuda*) [ -z "$CUDA" ] && { echo "gpu_check.sh: --device $DEVICE but torch sees no CUDA device" >&2; exit 2; } ;;
  cpu) ;;
  *) echo "gpu_check.sh: --device must be auto, cpu, cuda or cuda:N, got $DEVICE" >&2; exit 2 ;;
esac
ON_CUDA=0; case "$DEVICE" in cuda*) ON_CUDA=1 ;; esac
NOTE=""; [ "$ON_CUDA" = 0 ] && NOTE=" (CUDA not available: CPU variant)"

ROWS=()
row() { ROWS+=("$(printf '%-34s | %-8s | %7s | %s' "$1" "$2" "$3" "$4")"); }

# run NAME LIMIT_S COMMAND... : runs with a time limit, log in $OUT/NAME.log; sets RC and SECS
run() {
  local name="$1" limit="$2"; shift 2
  local log="$OUT/$name.log" t0
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ $*" >"$log"; RC=0; SECS=0; return
  fi
  t0=$(date +%s.%N)
  timeout "$limit" "$@" >"$log" 2>&1
  RC=$?
  SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
}
status() { if [ "$RC" = 0 ]; then echo "${SECS}s"; elif [ "$RC" = 124 ]; then echo "timeout"; else echo "rc=$RC"; fi; }
last() { [ "$DRY_RUN" = 1 ] && { echo "dry-run: $(head -c 120 "$OUT/$1.log")"; return; }; grep -v '^\s*$' "$OUT/$1.log" | tail -n "${2:-1}" | tr '\n' ' ' | cut -c1-150; }

# 1. The suite's CUDA tests (they skip themselves without CUDA).
run cuda_tests 240 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests
row "CUDA tests (pytest -k cuda)" "$DEVICE" "$(status)" "$(last cuda_tests)$( [ "$ON_CUDA" = 0 ] && echo ' [no CUDA: skipped]')"

# 2. compress_ of the 6-layer benchmark model vs one training step, on the device.
#    (benchmarks/bench_compress.py itself has no --device option: this step runs its model on DEVICE.)
run compress 150 "$PY" - "$DEVICE" <<'EOF'
import statistics, sys, time
import torch
sys.path.insert(0, "benchmarks")
from bench_compress import make_model
import adapters.torch as at
device = torch.device(sys.argv[1])
cuda = device.type == "cuda"
d_model, d_state, layers, batch, length = (512, 384, 6, 16, 1024) if cuda else (512, 384, 6, 4, 256)
sync = torch.cuda.synchronize if cuda else (lambda: None)
model = make_model(d_model, d_state, layers).to(device)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(batch, length, d_model, device=device)
steps = []
for _ in range(4):
    sync(); t = time.perf_counter()
    opt.zero_grad(); model(x).pow(2).mean().backward(); opt.step()
    sync(); steps.append(time.perf_counter() - t)
cuts = []
for _ in range(3):
    m = make_model(d_model, d_state, layers).to(device)
    o = torch.optim.Adam(m.parameters(), lr=1e-3)
    sync(); t = time.perf_counter()
    report = at.compress_(m, tol=0.05, optimizer=o)
    sync(); cuts.append(time.perf_counter() - t)
step, cut = statistics.median(steps[1:]), statistics.median(cuts)
print(f"batch {batch} x L {length}: step {step*1e3:.1f} ms, compress_ {cut*1e3:.1f} ms, "
      f"ratio {cut/step:.2f} (state {report.state_before}->{report.state_after})")
EOF
row "compress_ vs 1 training step" "$DEVICE" "$(status)" "$(last compress)$NOTE"

# 3. LRU step times by d_state.
run lru_step 150 "$PY" benchmarks/bench_lru_step.py --quick --skip-model --device "$DEVICE"
row "LRU step time by d_state" "$DEVICE" "$(status)" "see details below$NOTE"

# 4. The core's batched HSVs on the device vs CPU (same systems, values compared).
run hsv 90 "$PY" - "$DEVICE" <<'EOF'
import statistics, sys, time
import torch
import lti_reduce as lr
device = torch.device(sys.argv[1])
cuda = device.type == "cuda"
batch, n, m = (64, 256, 16) if cuda else (16, 128, 8)
g = torch.Generator().manual_seed(0)
r = 0.5 + 0.49 * torch.rand(batch, n, generator=g, dtype=torch.float64)
lam = r * torch.exp(1j * 3.14159 * torch.rand(batch, n, generator=g, dtype=torch.float64))
B = torch.randn(batch, n, m, generator=g, dtype=torch.complex128)
C = torch.randn(batch, m, n, generator=g, dtype=torch.complex128)
def timed(dev):
    s = lr.DiagonalSystem(lam.to(dev), B.to(dev), C.to(dev), None, real_output=True)
    out, times = None, []
    for _ in range(3):
        if dev.type == "cuda": torch.cuda.synchronize()
        t = time.perf_counter(); out = lr.hankel_singular_values(s)
        if dev.type == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return out.cpu(), statistics.median(times[1:])
h_cpu, t_cpu = timed(torch.device("cpu"))
if cuda:
    h_dev, t_dev = timed(device)
    err = float(((h_dev - h_cpu).abs() / h_cpu.abs().max(-1, keepdim=True).values).max())
    print(f"{batch} systems n={n}: cpu {t_cpu*1e3:.1f} ms, {device} {t_dev*1e3:.1f} ms, "
          f"speed-up {t_cpu/t_dev:.2f}x, max rel diff {err:.1e}")
else:
    print(f"{batch} systems n={n}: cpu {t_cpu*1e3:.1f} ms (no CUDA: no device column)")
EOF
row "batched HSVs: device vs CPU" "$DEVICE" "$(status)" "$(last hsv)"

# 5. lti-reduce train --quick on the device.
run train_quick 150 "$PY" -m lti_reduce._cli train --quick --device "$DEVICE" --out "$OUT/train_quick"
row "lti-reduce train --quick" "$DEVICE" "$(status)" "$(last train_quick 2)$NOTE"

echo
echo "GPU check: device $DEVICE${CUDA:+ ($CUDA)}$( [ "$ON_CUDA" = 0 ] && [ "$DRY_RUN" = 0 ] && echo ' -- CUDA not available on this machine')"
printf '%-34s | %-8s | %7s | %s\n' "check" "device" "time" "result"
printf '%s\n' "-----------------------------------+----------+---------+------------------------------------------"
for r in "${ROWS[@]}"; do echo "$r"; done
echo
echo "details: LRU step times (benchmarks/bench_lru_step.py); all logs in $OUT"
[ "$DRY_RUN" = 0 ] && grep -v '^\s*$' "$OUT/lru_step.log" | tail -n 15
exit 0
