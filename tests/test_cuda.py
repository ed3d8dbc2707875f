"""CUDA checks: they run on a machine with a GPU (bench/device_check.sh runs them there) and skip elsewhere."""
import numpy as np
import pandas as pd
import pytest
import torch

from movie_genre.demo import make_demo
from movie_genre.device import Runtime
from movie_genre.predict import Predictor
from movie_genre.train import TrainConfig, train_fold

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('MOVIE_GENRE_CACHE', str(tmp_path / 'cache'))


def test_a_fold_trains_on_the_gpu_with_mixed_precision(tmp_path):
    data = make_demo(tmp_path / 'data', n_train=200, n_test=16)
    cfg = TrainConfig(data_dir=str(data), runs_dir=str(tmp_path / 'runs'), run_name='g', folds=4, epochs=3, image_size=32)
    runtime = Runtime.of(cfg)
    assert runtime.device.type == 'cuda' and runtime.dtype in (torch.bfloat16, torch.float16)
    result = train_fold(cfg)
    assert result['epoch'] == 3 and np.isfinite(result['f1_macro'])
    env = pd.read_json(cfg.fold_dir / 'environment.json', typ='series')
    assert env['device'].startswith('cuda') and env['autocast'] in ('bfloat16', 'float16')
    # prediction on the GPU gives the CPU's numbers to within mixed precision's rounding
    movie = pd.read_csv(data / 'test.csv').iloc[0]
    poster, array = data / 'test' / f'{movie.id}.jpg', data / 'test_w2v' / f'{movie.id}.npy'
    gpu = Predictor.from_run('g', runs_dir=tmp_path / 'runs').predict(poster, title_array=array, year=movie.year)
    cpu = Predictor.from_run('g', runs_dir=tmp_path / 'runs', runtime=Runtime(torch.device('cpu'))).predict(poster, title_array=array, year=movie.year)
    assert np.abs(np.array(list(gpu['probabilities'].values())) - list(cpu['probabilities'].values())).max() < 0.02


def test_a_gpu_that_does_not_exist_is_refused():
    from movie_genre.device import resolve_device
    with pytest.raises(RuntimeError, match='CUDA device'): resolve_device(f'cuda:{torch.cuda.device_count()}')
