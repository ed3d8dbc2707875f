#!/usr/bin/env bash
# The README's figures, made from the synthetic demo set (never from real posters, which may not be committed):
# a comparison of two runs (reports/readme/compare_genre_f1.png), a Grad-CAM grid (reports/readme/saliency.png) and the
# optimization history of a small Optuna study (reports/readme/study_history.png).
# A few minutes on two CPU cores:  bash bench/readme_figures.sh [all|runs|study]
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export MOVIE_GENRE_CACHE="$work/cache" NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg
mg() { .venv/bin/python -m movie_genre.cli "$@"; }
what=${1:-all}
mg demo "$work/data" --n-train 480 --n-test 24
mkdir -p reports/readme
where=(-p data_dir "$work/data" -p runs_dir "$work/runs" -p reports_dir "$work/reports")
if [ "$what" = all ] || [ "$what" = study ]; then
  mg tune --study demo-study --n-trials 10 --folds 1-2 "${where[@]}" -p folds 3 -p epochs 3 -p image_size 32 --seed 0
  mg tune --study demo-study --report "${where[@]}"
  cp "$work/reports/studies/demo-study/history.png" reports/readme/study_history.png
  echo "wrote reports/readme/study_history.png"
fi
[ "$what" = study ] && exit 0
common=("${where[@]}" -p folds 3 -p epochs 6 -p image_size 48)
mg train --run-name width16 --folds 1-3 "${common[@]}" -p width 16
mg train --run-name width32 --folds 1-3 "${common[@]}" -p width 32
mg compare width16 width32 --runs-dir "$work/runs" --out "$work/compare"
mg evaluate --run-name width32 -p runs_dir "$work/runs" -p reports_dir "$work/reports"
cp "$work/compare/genre_f1.png" reports/readme/compare_genre_f1.png
# the grid at two thirds of its size and 256 colours: a README figure, not a 2 MB file in git
.venv/bin/python -c "
from PIL import Image; import sys
im = Image.open(sys.argv[1]).convert('RGB'); im = im.resize((im.width * 2 // 3, im.height * 2 // 3), Image.LANCZOS)
im.quantize(256).save(sys.argv[2], optimize=True)" "$work/reports/width32/saliency.png" reports/readme/saliency.png
echo "wrote reports/readme/compare_genre_f1.png and reports/readme/saliency.png"
