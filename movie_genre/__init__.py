__version__ = "0.1.0"

# Before any module imports torch: idle OpenMP threads sleep instead of spinning, which on a CPU shared with other
# work (a second training, a loader, a notebook) made training up to 7 times slower. The one line of this package
# that no notebook writes (nbdev keeps only the version line up to date); set OMP_WAIT_POLICY yourself to override.
import os
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
