"""Launcher options: SLURM time and memory as submitit takes them; a clear error where there is no SLURM."""
import pytest

from vitscope.experiments.launchers import SlurmOptions, parse_mem_gb, parse_time_minutes, submit


@pytest.mark.parametrize("text,minutes", [("90", 90), ("1:30:00", 90), ("0:10:30", 11), ("5:00", 5),
                                          ("2-00:00:00", 2880), ("1-12", 2160)])
def test_slurm_time_in_minutes(text, minutes):
    assert parse_time_minutes(text) == minutes


@pytest.mark.parametrize("text,gb", [("32G", 32.0), ("512M", 0.5), ("64", 64.0), ("1T", 1024.0), ("16GB", 16.0)])
def test_slurm_memory_in_gb(text, gb):
    assert parse_mem_gb(text) == pytest.approx(gb)


def test_bad_values_are_one_line_errors():
    with pytest.raises(ValueError, match="--time takes minutes or HH:MM:SS"):
        parse_time_minutes("1h")
    with pytest.raises(ValueError, match="--mem takes a size such as 32G"):
        parse_mem_gb("lots")


def test_slurm_launcher_without_slurm_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))                 # no srun / sbatch, even where SLURM is installed
    with pytest.raises(RuntimeError, match="no SLURM here"):
        submit(tmp_path, ["cell"], "slurm", SlurmOptions())
