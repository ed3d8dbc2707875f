#!/usr/bin/env bash
# The prepared device run (issue 14), for a session that is lent a GPU machine (an H200 here).
#
# Here, once:   bash bench/device_check.sh prepare
#               builds .device/ (git-ignored): the wheels the GPU image lacks and posters8 re-encoded to 64x96,
#               small enough to travel with the project (at most 64 MiB a call).
# There:        the device tool's run, with carry [".device"] and timeout_s 540:
#               bash bench/device_check.sh run
#               which installs the wheels, then: the CUDA tests, `papermill nbs/04_train.ipynb out.ipynb -p fold 8` on
#               CUDA, the epoch time, a full 8-fold cross-validation with `movie-genre train --folds 1-8`, its wall time
#               and its evaluation; everything it measured comes back in $OUT (device_check.log, report.md, scores.csv).
# Anywhere, to try the run part on a CPU: FOLDS=1 EPOCHS=1 OUT=/tmp/out bash bench/device_check.sh run
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.device
POSTERS8=${POSTERS8:-../shared/data/posters8}
WHEELS="albumentations albucore stringzilla simsimd pydantic pydantic-core annotated-types typing-inspection
iterative-stratification captum papermill nbformat nbclient jupyter-client jupyter-core ipykernel ipython traitlets
tenacity entrypoints ansicolors fastjsonschema jsonschema jsonschema-specifications referencing rpds-py pyzmq tornado comm
debugpy matplotlib-inline nest-asyncio prompt-toolkit jedi parso pexpect ptyprocess stack-data executing asttokens
pure-eval wcwidth decorator platformdirs ipython-pygments-lexers"

case "${1:-}" in
prepare)
  grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
  rm -rf "$CARRY"; mkdir -p "$CARRY/whl"
  for w in $WHEELS; do  # no dependencies: each one the image lacks is named above
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_24_x86_64 --platform any -d "$CARRY/whl" "$w" 2>&1 | grep -v '^WARNING: Location' || true
  done
  .venv/bin/python - "$POSTERS8" "$CARRY/posters8" <<'PY'
import sys, shutil
from pathlib import Path
import cv2, numpy as np, pandas as pd
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
(dst / 'train').mkdir(parents=True)
table = pd.read_csv(src / 'train.csv')
table.to_csv(dst / 'train.csv', index=False)
for i in table['id']:  # the default poster size (96x64): the cache resizes nothing more
    poster = cv2.resize(cv2.imread(str(src / 'train' / f'{i}.jpg')), (64, 96), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(dst / 'train' / f'{i}.jpg'), poster, [cv2.IMWRITE_JPEG_QUALITY, 70])
arrays = np.stack([np.load(src / 'train_w2v' / f'{i}.npy') for i in table['id']]).astype(np.float16)
np.savez_compressed(dst / 'title_arrays.npz', ids=table['id'].to_numpy(), arrays=arrays)  # unpacked into files there
PY
  du -sh --apparent-size "$CARRY" "$CARRY"/* "$CARRY"/posters8/*  # what travels: at most 64 MiB with the project
  ;;
run)
  OUT=${OUT:?run it through the device tool, or set OUT}
  exec > >(tee "$OUT/device_check.log") 2>&1
  export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg MOVIE_GENRE_CACHE=/tmp/movie-genre-cache
  if [ -d "$CARRY/whl" ] && ! python3 -c 'import albumentations, papermill' 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$CARRY"/whl/*.whl
    export PYTHONPATH=/tmp/site
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  DATA=/tmp/posters8
  if [ ! -f "$DATA/train.csv" ]; then
    mkdir -p "$DATA/train_w2v"; cp -r "$CARRY/posters8/train" "$CARRY/posters8/train.csv" "$DATA/"
    python3 -c "
import numpy as np; z = np.load('$CARRY/posters8/title_arrays.npz')
for i, a in zip(z['ids'], z['arrays']): np.save(f'$DATA/train_w2v/{i}.npy', a.astype(np.float32))"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo 'no nvidia-smi'
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
  echo '== the CUDA tests'
  python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider || true
  RUNS=/tmp/runs EPOCHS=${EPOCHS:-12}
  echo '== papermill nbs/04_train.ipynb out.ipynb -p fold 8 (on CUDA when there is one)'
  start=$(date +%s)
  python3 -m papermill nbs/04_train.ipynb "$OUT/04_train_fold8.ipynb" --log-output --no-progress-bar -p fold 8 \
    -p data_dir "$DATA" -p runs_dir "$RUNS" -p reports_dir /tmp/reports -p run_name gpu -p epochs "$EPOCHS" > "$OUT/fold8.log" 2>&1 \
    || { tail -30 "$OUT/fold8.log"; exit 1; }
  echo "fold 8: $(( $(date +%s) - start )) s in all"; grep -E '^fold 8 (of|epoch)' "$OUT/fold8.log" || true
  python3 -c "
import pandas as pd; s = pd.read_csv('$RUNS/gpu/fold8/summary.csv')
print(f'one epoch: median {s.seconds.median():.2f} s (train + validation), {s.images_per_s.median():.0f} training images/s')"
  echo "== movie-genre train --run-name gpu --folds ${FOLDS:-1-8} (fold 8 is finished: skipped)"
  start=$(date +%s)
  python3 -m movie_genre.cli train --run-name gpu --folds "${FOLDS:-1-8}" -p data_dir "$DATA" -p runs_dir "$RUNS" \
    -p reports_dir /tmp/reports -p epochs "$EPOCHS"
  echo "cross-validation: $(( $(date +%s) - start )) s of wall time for the folds it trained"
  python3 -m movie_genre.cli evaluate --run-name gpu -p runs_dir "$RUNS" -p reports_dir /tmp/reports -p explain False
  cp /tmp/reports/gpu/report.md /tmp/reports/gpu/scores.csv "$OUT/"
  ;;
*) echo "usage: bash bench/device_check.sh prepare | run" >&2; exit 2 ;;
esac
