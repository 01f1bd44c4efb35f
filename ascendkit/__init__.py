"""ascend-deploy-kit: the command line (`ascendkit`) and the pipelines that combine the packages."""

from ascend_common import __version__

__all__ = ["__version__"]
