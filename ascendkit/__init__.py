"""ascend-deploy-kit: the command line (`ascendkit`) and the pipelines that combine the packages."""

__version__ = "0.1.0"
