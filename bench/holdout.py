"""Fold ensemble on held-out movies: fold 8 of posters8's 8-fold split (fold_seed 42) is set aside as a test set,
a recipe's 7 fold models are trained on the other 7 folds (their own 7-fold split), and fold 8 is scored for each
fold model alone and for the average of all 7, with thresholds tuned on the 7-fold out-of-fold predictions.

posters8 has no labelled test split, so this is how a submission (the fold ensemble, decoded with OOF-tuned
thresholds) is measured on movies that neither training nor threshold tuning saw.

    python bench/holdout.py --recipe ours              # 7 trainings; a finished fold is skipped
    python bench/holdout.py --recipe seed --folds 1    # one fold model: the competition notebook's single model
    python bench/holdout.py --recipe ours,ours-s1      # two seeds: 14 models, averaged
"""
from __future__ import annotations
import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark import FIXED_THRESHOLD, FOLD_SEED, N_FOLDS, RECIPES, DataCache, default_data_dir, pooled_oof
from movie_genre.data import MovieData, make_folds, project_root
from movie_genre.metrics import decode, f1_scores, tune_thresholds
from movie_genre.train import TrainConfig, train_fold

HELD_OUT_FOLD = 8


def take(data: MovieData, rows: np.ndarray) -> MovieData:
    "The movies at `rows` of `data`, posters read into memory."
    return MovieData(data.table.iloc[rows].reset_index(drop=True), np.asarray(data.images[rows]), data.title_vectors[rows],
                     data.title_len[rows], data.year[rows], data.labels[rows], data.genres)


def scores(labels: np.ndarray, probs: np.ndarray, thresholds: dict[str, np.ndarray]) -> dict:
    "Micro, macro and samples F1 at 0.3 and at each set of `thresholds` (all with the 1-3 genre rule)."
    out = {}
    for name, t in {f'{FIXED_THRESHOLD:g}': FIXED_THRESHOLD, **thresholds}.items():
        f1 = f1_scores(labels, decode(probs, t))
        out.update({f'{m}@{name}': f1[m] for m in ('micro', 'macro', 'samples')})
    return out


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-dir', type=Path, default=default_data_dir())
    parser.add_argument('--recipe', default='ours', help=f'one, or several joined by commas (averaged), of: {", ".join(RECIPES)}')
    parser.add_argument('--folds', default=','.join(map(str, range(1, N_FOLDS))),
                        help='comma-separated folds (1..7) of the 7-fold split of the other movies to train and ensemble')
    parser.add_argument('--runs-dir', default='runs/bench', help='the run folder holdout-<recipe> goes here (relative: under the project)')
    args = parser.parse_args(argv)
    names = args.recipe.split(',')
    unknown = [name for name in names if name not in RECIPES]
    if unknown: raise SystemExit(f'unknown recipe(s) {unknown}; known: {list(RECIPES)}')
    if len({(RECIPES[name]['image_size'], RECIPES[name]['aspect']) for name in names}) > 1:
        raise SystemExit('recipes averaged together must use one poster size')
    runs = Path(args.runs_dir) if Path(args.runs_dir).is_absolute() else project_root() / args.runs_dir
    data = DataCache(args.data_dir.resolve()).get(RECIPES[names[0]]['image_size'], RECIPES[names[0]]['aspect'])
    held = (make_folds(data, N_FOLDS, FOLD_SEED)['fold'] == HELD_OUT_FOLD).to_numpy()
    rest, holdout = take(data, np.flatnonzero(~held)), take(data, np.flatnonzero(held))
    print(f'{len(rest)} movies to train on (7 folds), {len(holdout)} held out (fold {HELD_OUT_FOLD} of {N_FOLDS})', flush=True)

    fold_list = [int(k) for k in args.folds.split(',')]
    for name in names:
        for k in fold_list:
            cfg = TrainConfig(**RECIPES[name], fold=k, folds=N_FOLDS - 1, fold_seed=FOLD_SEED,
                              data_dir=str(args.data_dir.resolve()), run_name=f'holdout-{name}', runs_dir=str(runs))
            print(f'== {cfg.run_name} fold {k}', flush=True)
            train_fold(cfg, rest, holdout)

    # with several recipes, a "fold model" is the average of the recipes' models of that fold
    oof = [pooled_oof(runs / f'holdout-{name}', fold_list, rest) for name in names]
    oof_ids, oof_labels = oof[0][:2]
    oof_probs = np.mean([pd.DataFrame(p, index=ids).loc[oof_ids].to_numpy() for ids, _, p in oof], 0)
    thresholds = {'tuned': tune_thresholds(oof_labels, oof_probs, metric='macro'),
                  'micro-tuned': tune_thresholds(oof_labels, oof_probs, metric='micro')}
    fold_probs = [np.mean([pd.read_csv(runs / f'holdout-{name}' / f'fold{k}' / 'test_probs.csv').set_index('id')
                           .loc[holdout.ids, data.genres].to_numpy() for name in names], 0) for k in fold_list]
    rows = {f'fold {k} model': scores(holdout.labels, p, thresholds) for k, p in zip(fold_list, fold_probs)}
    singles = pd.DataFrame(rows).T
    n = len(fold_list)
    if n > 1: rows = {**rows, f'mean of the {n} single models': singles.mean().to_dict(),
                      f'fold ensemble (average of {n})': scores(holdout.labels, np.mean(fold_probs, 0), thresholds)}
    rows[f'OOF of folds {args.folds} (thresholds tuned in-sample)'] = scores(oof_labels, oof_probs, thresholds)
    table = pd.DataFrame(rows).T
    pd.set_option('display.width', 250); pd.set_option('display.max_columns', 30)
    print(f'\n{args.recipe} on the {len(holdout)} held-out movies; @0.3: threshold 0.3; @tuned / @micro-tuned: per-genre '
          f'thresholds tuned for macro / micro F1 on the OOF of folds {args.folds}; all with the 1-3 genre rule')
    print(table.round(4).to_string())
    out = runs / f'holdout-{"+".join(names)}.csv'
    table.to_csv(out)
    return table


if __name__ == '__main__':
    main()
