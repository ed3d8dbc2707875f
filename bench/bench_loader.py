"""Loader benchmark: poster cache build time, and images per second over one training epoch of our loader
(cached uint8 posters, one warp per poster) against the competition notebook's way (decode, resize, augment and
normalise every poster every epoch).

Ours is timed on 128x128 squares, the notebook's own input and so the same pixels per poster, and on the
project's 192x128 posters (the poster's 2:3).

    python bench/bench_loader.py [--data-dir ../shared/data/posters8] [--image-size 128] [--batch-size 64]
                                 [--limit N] [--notebook-limit 2000]
"""
from __future__ import annotations
import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch

from movie_genre.data import (MovieDataset, load_split, make_loader, parse_genres, poster_shape, resolve_path,
                              train_transforms)

REPO = Path(__file__).resolve().parents[1]


def notebook_transforms(height: int, width: int) -> A.Compose:
    "The competition notebook's per-poster pipeline, in albumentations 2.x: resize, five augmentations, normalise."
    ratio = width / height
    return A.Compose([
        A.Resize(height, width),
        A.RandomResizedCrop(size=(height, width), scale=(0.7, 1.0), ratio=(0.9 * ratio, 1.1 * ratio)),
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.Affine(translate_percent=(-0.05, 0.05), scale=(0.95, 1.05), rotate=(-10, 10), p=0.5),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15), p=0.3),
        A.Normalize(),
    ])


class NotebookDataset(torch.utils.data.Dataset):
    "The competition notebook's way: read, convert, resize, augment and normalise every poster on every access."
    def __init__(self, table: pd.DataFrame, data_dir: Path, genres: list[str], image_size: int):
        self.posters = [str(resolve_path(p, data_dir)) for p in table['path']]
        self.titles = [resolve_path(p, data_dir) for p in table['w2v_path']]
        self.labels = np.array([[g in parse_genres(gs) for g in genres] for gs in table['genres']], np.float32)
        self.transform = notebook_transforms(image_size, image_size)
    def __len__(self): return len(self.posters)
    def __getitem__(self, i):
        image = cv2.cvtColor(cv2.imread(self.posters[i]), cv2.COLOR_BGR2RGB)
        image = self.transform(image=image)['image']
        return (torch.from_numpy(image.transpose(2, 0, 1).copy()), torch.from_numpy(np.load(self.titles[i])),
                torch.from_numpy(self.labels[i]))


def microseconds_per_poster(transform: A.Compose, posters: np.ndarray) -> float:
    "Mean time of `transform` on each of `posters` (uint8, cached), in µs."
    transform.set_random_seed(0)
    start = time.perf_counter()
    for poster in posters: transform(image=poster)
    return (time.perf_counter() - start) / len(posters) * 1e6


def images_per_second(loader, n_images: int) -> float:
    "Images per second over one pass of `loader` (worker start-up included)."
    start = time.perf_counter()
    for _ in loader: pass
    return n_images / (time.perf_counter() - start)


def subset_folder(data_dir: Path, limit: int | None, dest: Path) -> Path:
    "`data_dir` itself, or a folder whose train.csv holds its first `limit` rows and links to its poster and title folders."
    if limit is None: return data_dir
    pd.read_csv(data_dir / 'train.csv', nrows=limit).to_csv(dest / 'train.csv', index=False)
    for folder in ('train', 'train_w2v'): (dest / folder).symlink_to(data_dir / folder)
    return dest


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-dir', type=Path, default=REPO / '../shared/data/posters8')
    parser.add_argument('--image-size', type=int, default=128)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--limit', type=int, default=None, help='use only the first N movies of train.csv')
    parser.add_argument('--notebook-limit', type=int, default=2000,
                        help="time the notebook's way on this many movies (0: all)")
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    if not (data_dir / 'train.csv').is_file(): raise SystemExit(f'no train.csv in {data_dir}: pass --data-dir')
    torch.manual_seed(0)
    # One thread for torch and OpenCV in this process, as in loader workers: on a shared machine, idle-spinning
    # thread pools would time the machine's load (a torch.stack of one batch took 90 ms), not the loaders.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ['MOVIE_GENRE_CACHE'] = str(Path(tmp) / 'cache')  # a cold cache, thrown away afterwards
        source = subset_folder(data_dir, args.limit, Path(tmp))
        ours = {}
        for aspect in (1.0, 1.5):
            start = time.perf_counter()
            data = load_split(source, 'train', args.image_size, aspect)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            data = load_split(source, 'train', args.image_size, aspect)
            warm = time.perf_counter() - start
            n, (h, w) = len(data), poster_shape(args.image_size, aspect)
            print(f'{n} movies from {data_dir}, posters cached at {h}x{w}, batch {args.batch_size}, {os.cpu_count()} CPUs')
            print(f'  load_split, cold cache (validate + decode every poster): {cold:6.1f} s  ({n / cold:,.0f} posters/s)')
            print(f'  load_split, warm cache (validate, reuse the cache):      {warm:6.1f} s')
            posters = np.asarray(data.images[:2000])
            notebook_steps = notebook_transforms(h, w).transforms  # [1] RandomResizedCrop, [4] Affine
            for name, transform in (("the notebook's crop and affine, two resamplings",
                                     A.Compose([notebook_steps[1], notebook_steps[4]])),
                                    ('RandomPosterWarp (crop, affine jitter, flip), one', A.Compose(train_transforms(h, w).transforms[:1])),
                                    ('all our train transforms', train_transforms(h, w))):
                print(f'  {name}: {microseconds_per_poster(transform, posters):5.0f} µs a poster')
            for workers in (0, 2):
                loader = make_loader(MovieDataset(data, transform=train_transforms(h, w)), args.batch_size,
                                     shuffle=True, num_workers=workers)
                ours[aspect, workers] = images_per_second(loader, n)
                print(f'  ours, train transforms, num_workers={workers}: {ours[aspect, workers]:8,.0f} images/s')
                del loader
        table = pd.read_csv(source / 'train.csv')
        if args.notebook_limit: table = table.sample(min(args.notebook_limit, len(table)), random_state=0)
        notebook = torch.utils.data.DataLoader(NotebookDataset(table, source, data.genres, args.image_size),
                                               batch_size=args.batch_size, shuffle=True, num_workers=0)
        theirs = images_per_second(notebook, len(table))
        size = args.image_size
        print(f"notebook's way ({len(table)} movies, {size}x{size}), num_workers=0: {theirs:8,.0f} images/s")
        for aspect, shape in ((1.0, f'{size}x{size}'), (1.5, '{}x{}'.format(*poster_shape(size, 1.5)))):
            print(f'speed-up at {shape}: {ours[aspect, 0] / theirs:.1f}x with num_workers=0, '
                  f'{ours[aspect, 2] / theirs:.1f}x with num_workers=2')

if __name__ == '__main__':
    main()
