"""Real-data benchmark: the competition notebook's recipe against ours, side by side on the same folds of posters8.

Each named recipe is trained with `train_fold` on the chosen folds of one 8-fold split (fold_seed 42), one
training at a time, in-process. A finished fold is skipped, so re-running only trains what is missing. Then each
recipe's out-of-fold probabilities are pooled over those folds and scored twice: at the seed notebook's fixed
threshold 0.3, and with per-genre thresholds tuned (for macro F1) on that recipe's pooled OOF probabilities.
A logistic regression on colour histograms, mean title vectors and the year gives a cheap reference on the same folds.

    python bench/benchmark.py --folds 1,2 --recipes seed,ours,logreg --tta-check --figure reports/benchmark_curves.png

Folds are numbered 1..8, as `movie_genre.data.make_folds` numbers them. See reports/benchmark.md for the results.
"""
from __future__ import annotations
import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

import numpy as np
import pandas as pd
import torch

from movie_genre.data import MovieData, load_split, project_root
from movie_genre.runs import MODEL_FILE, load_or_make_folds
from movie_genre.metrics import decode, f1_scores, genre_table, threshold_table, tune_thresholds
from movie_genre.model import build_model
from movie_genre.train import (TrainConfig, fold_datasets, load_checkpoint, make_loader, predict_probs,
                               train_fold)

N_FOLDS, FOLD_SEED = 8, 42
FIXED_THRESHOLD = 0.3  # the seed notebook's submission threshold

# The competition notebook's recipe: its network on square 128x128 posters, Adam at 1e-4 with L2 decay, constant
# lr, 10 epochs, no early stop (the best epoch by validation macro F1 is kept, as train_fold always does).
# `seed-64` is the same recipe on 64x64 squares, about the pixel count of our 96x64 posters.
SEED = dict(arch='seed', image_size=128, aspect=1.0, optimizer='adam', lr=1e-4, weight_decay=1e-5, loss='bce',
            batch_size=32, epochs=10, schedule='constant', warmup_epochs=0.0, augment=True, tta=False, ema=0.0,
            mixup=0.0, patience=100)

# Ours: a ResNet-D from scratch on 96x64 posters (the poster's own 2:3), pooled title encoder, the year,
# concatenated; AdamW with a one-epoch warm-up and cosine decay; flip TTA; 12 epochs, no early stop.
OURS = dict(arch='resnet', fusion='concat', width=32, depths='1,1,1,1', title_encoder='pool', use_year=True,
            image_size=64, aspect=1.5, optimizer='adamw', lr=3e-3, weight_decay=0.05, loss='bce', batch_size=64,
            epochs=12, schedule='cosine', warmup_epochs=1.0, augment=True, tta=True, ema=0.0, mixup=0.0, patience=100)

# `ours-s1` is ours from another seed (initialisation, batch order, augmentations), for seed averaging
# (`--ensembles ours+ours-s1`). `ours-image` and `ours-title` are ours with one modality (and the year). The other ablations were run when ours had
# lr 2e-3 (`ours-lr2e-3`): each is that recipe with one change, for one fold.
# The loss and epoch ablations of the report were run on its GMU variant (the candidate recipe then), so they are the
# `ours-gmu-*` recipes.
ABLATION_BASE = {**OURS, 'lr': 2e-3}
ABLATIONS = {'gmu': dict(fusion='gmu'), 'mixup': dict(mixup=0.3), 'asl': dict(loss='asl'),
             'lr1e-3': dict(lr=1e-3), 'ema': dict(ema=0.999), 'w48': dict(width=48), 'conv': dict(title_encoder='conv'),
             'noyear': dict(use_year=False), 'epochs20': dict(epochs=20), 'seed1': dict(seed=1),
             'mixup-e20': dict(mixup=0.3, epochs=20), '144x96': dict(image_size=96), 'lr4e-3': dict(lr=4e-3),
             'hidden256': dict(hidden=256), 'drop0.5': dict(dropout=0.5, title_dropout=0.4)}
GMU_ABLATIONS = {'asl': dict(loss='asl'), 'epochs20': dict(epochs=20)}

RECIPES: dict[str, dict] = {'seed': SEED, 'seed-64': {**SEED, 'image_size': 64}, 'ours': OURS, 'ours-s1': {**OURS, 'seed': 1},
                            'ours-lr2e-3': ABLATION_BASE,
                            'ours-image': {**OURS, 'fusion': 'image'}, 'ours-title': {**OURS, 'fusion': 'title'},
                            **{f'ours-{name}': {**ABLATION_BASE, **change} for name, change in ABLATIONS.items()},
                            **{f'ours-gmu-{name}': {**ABLATION_BASE, 'fusion': 'gmu', **change} for name, change in GMU_ABLATIONS.items()}}
LOGREG = 'logreg'


def default_data_dir() -> Path: return (project_root() / '..' / 'shared' / 'data' / 'posters8').resolve()


def recipe_config(name: str, fold: int, data_dir: Path, runs_dir: str, epochs_scale: float) -> TrainConfig:
    "The `TrainConfig` of recipe `name` on `fold`; a scaled epoch count gets its own run name."
    values = dict(RECIPES[name])
    run_name = name
    if epochs_scale != 1:
        values['epochs'] = max(1, round(values['epochs'] * epochs_scale))
        run_name = f'{name}-x{epochs_scale:g}'
    return TrainConfig(**values, fold=fold, folds=N_FOLDS, fold_seed=FOLD_SEED, data_dir=str(data_dir),
                       run_name=run_name, runs_dir=runs_dir)


class DataCache:
    "Each poster size loaded once (the poster cache on disk makes later runs of the script fast)."
    def __init__(self, data_dir: Path): self.data_dir, self.loaded = data_dir, {}
    def get(self, image_size: int, aspect: float) -> MovieData:
        key = (image_size, aspect)
        if key not in self.loaded: self.loaded[key] = load_split(self.data_dir, 'train', image_size, aspect)
        return self.loaded[key]


# The logistic-regression reference
def colour_histograms(images: np.ndarray, bins: int = 8, chunk: int = 1000) -> np.ndarray:
    "`(N, bins**3)` joint RGB histogram of each uint8 poster, as shares of its pixels."
    shift = 8 - int(np.log2(bins))
    out = np.zeros((len(images), bins ** 3), np.float32)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk]) >> shift
        cell = (block[..., 0].astype(np.int64) * bins + block[..., 1]) * bins + block[..., 2]
        cell = cell.reshape(len(block), -1) + bins ** 3 * np.arange(len(block))[:, None]
        counts = np.bincount(cell.ravel(), minlength=len(block) * bins ** 3).reshape(len(block), -1)
        out[start:start + len(block)] = counts / cell.shape[1]
    return out


def logreg_features(data: MovieData) -> np.ndarray:
    "Colour histogram, mean title vector over the real tokens, and the normalised year of each movie."
    mean_title = data.title_vectors.sum(1) / np.maximum(data.title_len, 1)[:, None]
    year = ((data.year - 2000.0) / 25.0)[:, None]
    return np.hstack([colour_histograms(data.images), mean_title, year]).astype(np.float32)


def train_logreg(data: MovieData, folds: pd.DataFrame, fold_list: list[int], out_dir: Path) -> None:
    "One-vs-rest logistic regression per fold, written like train_fold's: `fold<k>/oof.csv` and a one-row summary.csv."
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    todo = [k for k in fold_list if not (out_dir / f'fold{k}' / 'oof.csv').exists()]
    if not todo: return
    start = time.time()
    x = logreg_features(data)
    feature_seconds = time.time() - start
    fold_of = folds.set_index('id')['fold'].reindex(data.ids).to_numpy()
    for k in todo:
        start = time.time()
        train, valid = fold_of != k, fold_of == k
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=0.1, max_iter=2000)))
        model.fit(x[train], data.labels[train])
        probs = model.predict_proba(x[valid])
        fold_dir = out_dir / f'fold{k}'
        fold_dir.mkdir(parents=True, exist_ok=True)
        pd.concat([pd.DataFrame({'id': data.ids[valid]}), pd.DataFrame(probs, columns=data.genres)], axis=1
                  ).to_csv(fold_dir / 'oof.csv', index=False)
        pd.DataFrame([{'seconds': feature_seconds + time.time() - start, 'images_per_s': np.nan}]).to_csv(
            fold_dir / 'summary.csv', index=False)


# Pooling and scoring
def pooled_oof(run_dir: Path, fold_list: list[int], data: MovieData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    "`(ids, labels, probs)` of the OOF predictions of `fold_list` pooled; `FileNotFoundError` naming a missing fold."
    frames = []
    for k in fold_list:
        path = run_dir / f'fold{k}' / 'oof.csv'
        if not path.exists(): raise FileNotFoundError(f'{path} is missing: fold {k} of {run_dir.name} is not trained')
        frames.append(pd.read_csv(path))
    oof = pd.concat(frames, ignore_index=True)
    labels = pd.DataFrame(data.labels, index=data.ids, columns=data.genres).loc[oof['id']].to_numpy()
    return oof['id'].to_numpy(), labels, oof[data.genres].to_numpy()


def run_timing(run_dir: Path, fold_list: list[int]) -> dict:
    "From summary.csv: training minutes (epochs and their validation, all folds), median seconds an epoch, median images/s."
    summary = pd.concat([pd.read_csv(run_dir / f'fold{k}' / 'summary.csv') for k in fold_list])
    # medians, because other jobs on the shared cores slow some epochs several-fold
    return {'train min': summary['seconds'].sum() / 60, 'epoch s': summary['seconds'].median(),
            'img/s': summary['images_per_s'].median()}


def score_row(name: str, labels: np.ndarray, probs: np.ndarray) -> tuple[dict, np.ndarray]:
    "The table row of one recipe (fixed 0.3 and macro-tuned decodings, both with the 1-3 genre rule) and its thresholds."
    tuned = tune_thresholds(labels, probs, metric='macro')
    table = threshold_table(labels, probs, tuned, fixed=(FIXED_THRESHOLD,))
    fixed, best = table.loc[f'{FIXED_THRESHOLD:g}'], table.loc['tuned']
    uncapped = f1_scores(labels, (probs >= FIXED_THRESHOLD).astype(int))
    row = {'recipe': name, 'movies': len(labels),
           **{f'{m}@0.3': fixed[m] for m in ('micro', 'macro', 'samples')},
           **{f'{m}@tuned': best[m] for m in ('micro', 'macro', 'samples')},
           **{f'{m}@0.3 no cap': uncapped[m] for m in ('micro', 'macro', 'samples')},
           'micro@micro-tuned': f1_scores(labels, decode(probs, tune_thresholds(labels, probs, metric='micro')))['micro']}
    return row, tuned


def check_same_split(runs: Path, run_names: list[str]) -> pd.DataFrame:
    "The folds.csv all runs share; `ValueError` naming a run whose split differs."
    reference = None
    for name in run_names:
        folds = pd.read_csv(runs / name / 'folds.csv').sort_values('id').reset_index(drop=True)
        if reference is None: reference, first = folds, name
        elif not folds.equals(reference): raise ValueError(f'{runs / name / "folds.csv"} differs from the split of {first}')
    return reference


def tta_check(run_dir: Path, fold: int, cache: DataCache) -> pd.DataFrame:
    "Scores of one trained fold's best weights without and with flip TTA: a free ablation, no training."
    cfg = TrainConfig(**{**json.loads((run_dir / f'fold{fold}' / 'config.json').read_text()), 'device': 'cpu'})
    data = cache.get(cfg.image_size, cfg.aspect)
    model = build_model(cfg, len(data.genres), *data.title_vectors.shape[1:])
    model.load_state_dict(load_checkpoint(run_dir / f'fold{fold}' / MODEL_FILE)['weights'])
    _, valid = fold_datasets(cfg, data, pd.read_csv(run_dir / 'folds.csv'))
    loader = make_loader(valid, 128)
    labels = valid.data.labels[valid.indices]
    rows = []
    for tta in (False, True):
        _, probs, _ = predict_probs(model, loader, torch.device('cpu'), tta=tta)
        row, _ = score_row(f'{run_dir.name} tta={tta}', labels, probs)
        rows.append(row)
    return pd.DataFrame(rows).set_index('recipe')


def plot_curves(runs: Path, run_names: list[str], fold_list: list[int], path: Path) -> None:
    "Validation macro F1 of every epoch against the epoch and against the training minutes spent, per run and fold."
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4), layout='constrained')
    for i, name in enumerate(run_names):
        for j, k in enumerate(fold_list):
            summary = pd.read_csv(runs / name / f'fold{k}' / 'summary.csv')
            style = dict(color=f'C{i}', marker='osD^v'[j % 5], ls=('-', '--', ':', '-.')[j % 4],
                         label=name if len(fold_list) == 1 else f'{name} fold {k}')
            by_epoch.plot(summary['epoch'], summary['f1_macro'], **style)
            by_time.plot(summary['epoch'] * summary['seconds'].median() / 60, summary['f1_macro'], **style)
    by_epoch.set(xlabel='epoch', ylabel='validation macro F1 (thresholds tuned on the fold)')
    by_time.set(xlabel='training minutes at the median epoch time (2 CPU cores)', ylabel='validation macro F1')
    for ax in (by_epoch, by_time): ax.grid(alpha=0.3); ax.legend(fontsize=8)
    fig.suptitle('Validation macro F1 per epoch on posters8, fold ' + ', '.join(map(str, fold_list)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-dir', type=Path, default=default_data_dir(), help='posters8 (the competition layout)')
    parser.add_argument('--folds', default='1', help='comma-separated folds (1..8) of the 8-fold split (fold_seed 42)')
    parser.add_argument('--recipes', default='seed,ours,ours-title,logreg',
                        help=f'comma-separated, of: {", ".join([*RECIPES, LOGREG])}')
    parser.add_argument('--runs-dir', default='runs/bench', help='run folders go here (relative: under the project)')
    parser.add_argument('--epochs-scale', type=float, default=1.0, help='multiply every recipe\'s epochs (own run names)')
    parser.add_argument('--ensembles', default='', help="comma-separated averages of this call's recipes, e.g. ours+ours-seed1")
    parser.add_argument('--no-train', action='store_true', help='only score what is trained')
    parser.add_argument('--tta-check', action='store_true', help='also score each trained run without and with flip TTA')
    parser.add_argument('--figure', type=Path, default=None, help='save validation-F1 curves of the trained runs here')
    parser.add_argument('--out', default=None, help='write the table as CSV here (default: <runs-dir>/results-<folds>.csv)')
    args = parser.parse_args(argv)

    fold_list = [int(f) for f in args.folds.split(',')]
    names = [r.strip() for r in args.recipes.split(',') if r.strip()]
    unknown = [r for r in names if r not in RECIPES and r != LOGREG]
    if unknown: raise SystemExit(f'unknown recipe(s) {unknown}; known: {[*RECIPES, LOGREG]}')
    ensembles = [e.strip().split('+') for e in args.ensembles.split(',') if e.strip()]
    strangers = [m for members in ensembles for m in members if m not in names]
    if strangers: raise SystemExit(f'ensemble member(s) {strangers} are not among --recipes')
    data_dir = args.data_dir.resolve()
    runs = Path(args.runs_dir) if Path(args.runs_dir).is_absolute() else project_root() / args.runs_dir
    cache = DataCache(data_dir)

    run_names = {}
    for name in names:
        if name == LOGREG: continue
        for k in fold_list:
            cfg = recipe_config(name, k, data_dir, str(runs), args.epochs_scale)
            run_names[name] = cfg.run_name
            if args.no_train: continue
            data = cache.get(cfg.image_size, cfg.aspect)
            print(f'== {cfg.run_name} fold {k}', flush=True)
            train_fold(cfg, data)

    reference = cache.get(64, 1.5)  # every poster size has the same movies and labels
    if LOGREG in names:
        folds = load_or_make_folds(runs / LOGREG / 'folds.csv', reference, N_FOLDS, FOLD_SEED)
        train_logreg(reference, folds, fold_list, runs / LOGREG)
        run_names[LOGREG] = LOGREG
    check_same_split(runs, list(run_names.values()))

    rows, per_genre, oof = [], {}, {}
    for name, run_name in run_names.items():
        ids, labels, probs = pooled_oof(runs / run_name, fold_list, reference)
        oof[name] = ids, probs
        row, tuned = score_row(run_name, labels, probs)
        row.update(run_timing(runs / run_name, fold_list))
        rows.append(row)
        per_genre[run_name] = genre_table(labels, probs, decode(probs, tuned), reference.genres)[['f1', 'ap']]
    for members in ensembles:  # the average of the members' OOF probabilities, movie by movie
        first = oof[members[0]][0]
        probs = np.mean([pd.DataFrame(oof[m][1], index=oof[m][0]).loc[first].to_numpy() for m in members], 0)
        labels = pd.DataFrame(reference.labels, index=reference.ids).loc[first].to_numpy()
        row, _ = score_row('+'.join(run_names[m] for m in members), labels, probs)
        timing = [run_timing(runs / run_names[m], fold_list) for m in members]
        rows.append({**row, 'train min': sum(t['train min'] for t in timing)})
    table = pd.DataFrame(rows).set_index('recipe')
    pd.set_option('display.width', 250); pd.set_option('display.max_columns', 30)
    print(f'\nOOF over folds {fold_list} of the {N_FOLDS}-fold split (fold_seed {FOLD_SEED}); '
          f'@0.3: threshold 0.3 with 1-3 genres; @tuned: per-genre thresholds tuned for macro F1 on the pooled OOF')
    other = [c for c in table if 'no cap' in c or 'micro-tuned' in c]
    print(table.drop(columns=other).round(4).to_string())
    print('\nother decodings: plain >= 0.3 without the 1-3 genre rule; thresholds tuned for micro F1 instead of macro:')
    print(table[other].round(4).to_string())
    print('\nper-genre F1 (tuned decoding) and average precision:')
    print(pd.concat(per_genre, axis=1).round(3).to_string())
    trained = {name: run for name, run in run_names.items() if name != LOGREG}
    if args.tta_check:
        checks = pd.concat([tta_check(runs / run, k, cache) for name, run in trained.items() for k in fold_list
                            if RECIPES[name].get('fusion') != 'title'])
        print('\nflip TTA off and on, per fold (thresholds tuned on that fold):')
        print(checks.drop(columns=[c for c in checks if 'no cap' in c or 'micro-tuned' in c]).round(4).to_string())
    if args.figure: plot_curves(runs, list(trained.values()), fold_list, args.figure if args.figure.is_absolute() else project_root() / args.figure)
    out = Path(args.out) if args.out else runs / f'results-{args.folds.replace(",", "")}.csv'
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out)
    return table


if __name__ == '__main__':
    main()
