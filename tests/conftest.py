import os
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')


def pytest_configure(config):
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU (skips without one; bench/device_check.sh runs them on a GPU machine)')
