"""Real-data benchmark: the project's recipes, their ensembles and stacks, on the full 8-fold protocol of posters8.

Every recipe is a run of the project's own 8-fold split (fold_seed 42), trained the way a user trains one: networks
through `movie-genre train` (one papermill process per fold), the TF-IDF member with `movie-genre train --model tfidf`.
A finished fold is skipped, so calling the script again only trains what is missing. The table then scores each run,
each ensemble and each stack on all the movies of the folds they finished, pooled out of fold:

- `micro` / `macro` / `samples`: F1 with thresholds cross-fitted for that metric (each fold decoded with thresholds tuned
  on the other folds), the honest estimate for unseen movies; a run of one fold (an ablation) has thresholds tuned on
  its own movies, as the `estimate` column says (a tuned blend or a stack of one-fold runs is not scored: it says why).
  `micro` uses thresholds tuned for micro F1, `macro` and `samples` those tuned for macro F1, as a leaderboard of that
  metric would be submitted.
- `micro@0.3` / `macro@0.3`: the competition notebook's fixed threshold 0.3 (with the project's 1-3 genre rule).
- `train min`: the CPU (or GPU) minutes of training, summed over folds and members.

    python bench/benchmark.py --recipes ours,ours-48px,tfidf --ensembles ours+ours-48px --tuned ours+tfidf --stacks ours+tfidf
    python bench/benchmark.py --no-train ...          # score what is trained

See reports/benchmark.md for the results and the exact calls.
"""
from __future__ import annotations
import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
import numpy as np
import pandas as pd

from movie_genre.compare import estimate_kind
from movie_genre.checkpoints import backbone_path
from movie_genre.data import project_root
from movie_genre.ensemble import TooFewFolds, load_any
from movie_genre.evaluate import cross_fitted_predictions
from movie_genre.metrics import decode, f1_scores, tune_thresholds

ROOT = project_root()
POSTERS8 = (ROOT / '..' / 'shared' / 'data' / 'posters8').resolve()
# The competition notebook's recipe: its network on 128x128 squares, Adam at 1e-4 with L2 decay, constant lr, 10 epochs.
SEED = dict(arch='seed', image_size=128, aspect=1.0, optimizer='adam', lr=1e-4, weight_decay=1e-5, batch_size=32, epochs=10,
            schedule='constant', warmup_epochs=0.0, tta=False)
RECIPES = {'seed': SEED, 'ours': {}, 'ours-text': dict(title_input='both'), 'ours-text-gmu': dict(title_input='both', fusion='gmu'),
           'ours-w48': dict(width=48), 'ours-48px': dict(image_size=48, seed=2), 'tfidf': None}  # {}: the TrainConfig defaults; None: the TF-IDF member
# The best recipe of the posters8 study (issue 21: trial 25, folds 1-2, 3 epochs, 72x48 posters; reports/benchmark.md), written
# out so that it trains without the study's database; the schedule and poster size are the defaults (12 epochs, 96x64), as
# `movie-genre train --from-study posters8 --run-name posters8-best --folds 1-8 -p epochs 12 -p image_size 64` trains it.
RECIPES['posters8-best'] = dict(lr=0.007630014427964674, weight_decay=0.010637570708342387, width=32, depths='1,1,2,1',
                                mixup=0.04234128481871511, dropout=0.2737422859474375, label_smoothing=0.04079972259185155,
                                loss='bce', title_encoder='pool', fusion='concat')
# The best recipe of the second study, posters8b (issue 21: trial 27; folds 1-2, 4 epochs, 72x48 posters, the pruner watching every
# epoch; reports/studies/posters8b/), written out; trained at the stack's second network's schedule (72x48, 12 epochs, seed 2, as
# `ours-48px`) by `movie-genre train --from-study posters8b --run-name posters8b-best --folds 1-8 -p epochs 12 -p seed 2`.
RECIPES['posters8b-best'] = dict(image_size=48, seed=2, lr=0.004733147839930841, weight_decay=0.036684107153167306,
                                 mixup=0.11378783321522555, dropout=0.1622181429340831, label_smoothing=0.057391189479073526,
                                 loss='bce', title_encoder='conv', fusion='concat')
# The unlabelled posters (issue 22). Pseudo-labels: fold k adds its own validation posters, unlabelled, soft-labelled by fold k
# of `ours` (or of the TF-IDF member, 30 times cheaper to train), trained first. Pretraining: the poster network starts from a
# SimCLR backbone learnt on every poster without labels, made first when missing (PRETRAININGS, by `movie-genre pretrain --name
# NAME`, with the default width and depths: a recipe with other ones needs a pretraining of its own).
RECIPES['ours-pseudo'] = dict(pseudo='ours', pseudo_posters='validation')
RECIPES['ours-pseudo-tfidf'] = dict(pseudo='tfidf', pseudo_posters='validation')
RECIPES['ours-ssl8'] = dict(init='ssl8')
RECIPES['ours-ssl8-pseudo'] = dict(init='ssl8', pseudo='ours', pseudo_posters='validation')  # both
# The stack's second network (`ours-48px`), taught by the stronger first one (`ours-ssl8`), so that each network member learns
# from the unlabelled posters, one by pretraining, the other by pseudo-labels. On its own validation posters: a measurement (for
# a submission, the same recipe on the test posters, the default pseudo_posters).
RECIPES['ours-48px-pseudo'] = dict(image_size=48, seed=2, pseudo='ours-ssl8', pseudo_posters='validation')
PRETRAININGS = {'ssl8': dict(image_size=48, epochs=30)}  # 72x48 posters: half the CPU of 96x64; the backbone fits any poster size


def movie_genre(*args: str, params: dict):
    "Run `movie-genre ARGS -p key value ...` (this environment's), printed first; a failure stops the benchmark."
    command = [str(Path(sys.executable).parent / 'movie-genre'), *args]
    for key, value in params.items(): command += ['-p', key, str(value)]
    print('$ movie-genre', ' '.join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def pretrain(name: str, runs_dir: str, data_dir: Path):
    "Make pretraining `name` with the project's own command, unless its backbone is there (whether it fits, training checks)."
    if backbone_path(name, runs_dir).is_file(): return
    movie_genre('pretrain', '--name', name, params=dict(data_dir=data_dir, runs_dir=runs_dir, **PRETRAININGS[name]))


def with_teachers(names: list[str]) -> list[str]:
    "The recipes to train, in order: each one after the recipes that teach it pseudo-labels (`pseudo`), added when not named."
    ordered = []
    def add(name):
        for teacher in filter(None, (RECIPES[name] or {}).get('pseudo', '').split(',')):
            if teacher in RECIPES and teacher not in ordered: add(teacher)
        if name not in ordered: ordered.append(name)
    for name in names: add(name)
    return ordered


def train(name: str, runs_dir: str, data_dir: Path, folds: str):
    "Train the missing folds of recipe `name` with the project's own command."
    if (RECIPES[name] or {}).get('init') in PRETRAININGS: pretrain(RECIPES[name]['init'], runs_dir, data_dir)
    model = ['--model', 'tfidf'] if RECIPES[name] is None else []
    movie_genre('train', *model, '--run-name', name, '--folds', folds, params=dict(data_dir=data_dir, runs_dir=runs_dir, **(RECIPES[name] or {})))


def score(spec: str, runs_dir: str, stack: bool = False, weights: str = 'equal') -> dict:
    "The table row of a run or ensemble: cross-fitted F1s, fixed-threshold F1s, training minutes."
    try: run = load_any(spec, runs_dir, weights=weights, stack=stack, verbose=False)
    except TooFewFolds as e:  # a tuned blend or a stack of one-fold ablations: nothing to fit them on without the scored fold
        return {'run': spec.replace(',', '+') + ('-stacked' if stack else '-tuned'), 'estimate': f'not scored: {e}'}
    row = {'run': run.name, 'folds': len(run.finished), 'movies': len(run.ids), 'estimate': estimate_kind(run)}
    for metric in ('micro', 'macro'):
        predictions = cross_fitted_predictions(run, metric)
        if predictions is None:  # one fold (an ablation): thresholds tuned on its own movies, as the estimate column says
            predictions = decode(run.probs, tune_thresholds(run.labels, run.probs, metric, run.max_genres), run.max_genres)
        crossed = f1_scores(run.labels, predictions)
        row[metric] = crossed[metric]
        if metric == 'macro': row['samples'] = crossed['samples']
    fixed = f1_scores(run.labels, decode(run.probs, 0.3, run.max_genres))
    row.update({'micro@0.3': fixed['micro'], 'macro@0.3': fixed['macro'], 'train min': run.summaries['seconds'].sum() / 60})
    return row


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-dir', type=Path, default=POSTERS8, help='posters8 (the competition layout)')
    parser.add_argument('--recipes', default='ours,tfidf', help=f'comma-separated, of: {", ".join(RECIPES)}')
    parser.add_argument('--folds', default='1-8', help='folds to train (the table uses the folds every member finished)')
    parser.add_argument('--runs-dir', default=str(ROOT / 'runs'), help='run folders (absolute, or relative to the project)')
    parser.add_argument('--ensembles', default='', help='comma-separated ensembles to score, members joined by +: ours+ours-text')
    parser.add_argument('--tuned', default='', help='comma-separated ensembles to score with weights tuned out of fold')
    parser.add_argument('--stacks', default='', help='comma-separated stacks to score, members joined by +')
    parser.add_argument('--no-train', action='store_true', help='only score what is trained')
    parser.add_argument('--out', default=None, help='write the table as CSV here')
    args = parser.parse_args(argv)
    names = [r.strip() for r in args.recipes.split(',') if r.strip()]
    unknown = [r for r in names if r not in RECIPES]
    if unknown: raise SystemExit(f'unknown recipe(s) {unknown}; known: {list(RECIPES)}')
    if not args.no_train:
        for name in with_teachers(names): train(name, args.runs_dir, args.data_dir.resolve(), args.folds)
    rows = [score(name, args.runs_dir) for name in names]
    rows += [score(e.replace('+', ','), args.runs_dir) for e in args.ensembles.split(',') if e.strip()]
    rows += [score(e.replace('+', ','), args.runs_dir, weights='tuned') for e in args.tuned.split(',') if e.strip()]
    rows += [score(s.replace('+', ','), args.runs_dir, stack=True) for s in args.stacks.split(',') if s.strip()]
    table = pd.DataFrame(rows).set_index('run')
    pd.set_option('display.width', 200)
    print('\npooled out-of-fold; micro / macro / samples: thresholds tuned for micro / macro / macro F1, cross-fitted unless the '
          'estimate column says otherwise')
    print(table.round(4).to_string())
    if args.out: table.to_csv(args.out)
    return table


if __name__ == '__main__':
    main()
