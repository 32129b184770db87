"""The models shipped inside the package: :mod:`vitscope.bundled`, under the name it has always had here."""
from vitscope.bundled import BUNDLED_DIR, DEMO_DATA, DEMO_DATA_DEFAULTS, bundled_models, bundled_path, is_bundled

__all__ = ["BUNDLED_DIR", "DEMO_DATA", "DEMO_DATA_DEFAULTS", "bundled_models", "bundled_path", "is_bundled"]
