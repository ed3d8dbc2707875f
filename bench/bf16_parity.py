"""Accuracy parity of bf16 autocast against fp32: one fold of the default recipe trained both ways from the same seed.

    python bench/bf16_parity.py --epochs 2            # fold 1 of posters8; the full check is --epochs 12

On a CPU without native bf16 the bf16 run is emulated (same rounding, about 8x slower). Runs go to runs/parity/.
"""
import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
from movie_genre.data import load_split, project_root
from movie_genre.train import TrainConfig, train_fold

POSTERS8 = (project_root() / '..' / 'shared' / 'data' / 'posters8').resolve()

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-dir', type=Path, default=POSTERS8)
    parser.add_argument('--fold', type=int, default=1)
    parser.add_argument('--epochs', type=int, default=12)
    parser.add_argument('--runs-dir', default=str(project_root() / 'runs' / 'parity'))
    args = parser.parse_args(argv)
    data = load_split(args.data_dir, 'train', 64, 1.5)
    for name, precision in (('fp32', dict(amp=False)), ('bf16', dict(amp=True, amp_dtype='bf16'))):
        cfg = TrainConfig(data_dir=str(args.data_dir), runs_dir=args.runs_dir, run_name=f'{name}-e{args.epochs}',
                          fold=args.fold, epochs=args.epochs, **precision)
        start = time.time()
        result = train_fold(cfg, data)
        print(json.dumps({'precision': name, 'wall_s': round(time.time() - start), **result}), flush=True)

if __name__ == '__main__':
    main()
