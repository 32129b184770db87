"""Studies: models x datasets x analyses declared in one YAML file, expanded into resumable cells, run here,
in several processes or as a SLURM job array, writing one results table that the comparison figures read.

>>> from vitscope.experiments import load_study, run_study, read_results
>>> study = load_study("examples/walmer2023_study.yaml")
>>> summary = run_study(study, "runs/walmer2023-demo")
>>> df = read_results("runs/walmer2023-demo")          # = pandas.read_parquet("runs/walmer2023-demo/results")
"""
from vitscope.experiments.analyses import REGISTRY, AnalysisUnavailable, register
from vitscope.experiments.cells import Cell, expand
from vitscope.experiments.config import ConfigError, Study, load_study, parse_study
from vitscope.experiments.figures import summary_text, write_figures
from vitscope.experiments.results import SCHEMA, read_results
from vitscope.experiments.study import RunSummary, run_study

__all__ = ["REGISTRY", "SCHEMA", "AnalysisUnavailable", "Cell", "ConfigError", "RunSummary", "Study", "expand",
           "load_study", "parse_study", "read_results", "register", "run_study", "summary_text", "write_figures"]
