import pytest

from restore_core.config import RestoreConfig, from_dict, load_config, to_dict, yaml_load
from restore_core.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("input:\n  path: /data\nfit:\n  stride: 4\n")
    cfg = load_config(RestoreConfig, p, ["fit.l1=0.5", "output.path=/out", "fit.masked=false"])
    assert cfg.input.path == "/data"
    assert cfg.fit.stride == 4
    assert cfg.fit.l1 == 0.5
    assert cfg.fit.masked is False
    assert cfg.output.path == "/out"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'fit.strid'"):
        from_dict(RestoreConfig, {"fit": {"strid": 3}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'fit.stride' must be an integer"):
        from_dict(RestoreConfig, {"fit": {"stride": "two"}})
    with pytest.raises(ConfigError, match=r"'fit.method' must be one of"):
        from_dict(RestoreConfig, {"fit": {"method": "magic"}})
    with pytest.raises(ConfigError, match=r"'fit.masked' must be true or false"):
        from_dict(RestoreConfig, {"fit": {"masked": 1}})


def test_int_widens_to_float():
    cfg = from_dict(RestoreConfig, {"fit": {"l1": 1}})
    assert isinstance(cfg.fit.l1, float)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(RestoreConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(RestoreConfig, bad)


def test_a_key_given_twice_is_refused_naming_it(tmp_path):
    # PyYAML keeps the last of two equal keys silently: configs/quality.yaml once held one twice
    dup = tmp_path / "dup.yaml"
    dup.write_text("fit:\n  l1: 0.1\n  max_iter: 5\n  l1: 0.2\n")
    with pytest.raises(ConfigError, match=r"line 4: key 'l1' is given twice \(lines 2 and 4\)"):
        load_config(RestoreConfig, dup)
    # the same key in two sections is fine
    assert yaml_load("a:\n  tile: 64\nb:\n  tile: 32\n") == {"a": {"tile": 64}, "b": {"tile": 32}}


def test_yaml_tags_are_not_executed(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError):
        load_config(RestoreConfig, bad)


def test_storage_options_redacted():
    cfg = from_dict(RestoreConfig, {"input": {"storage_options": {"key": "AKIA123", "secret": "s3cr3t"}}})
    text = repr(to_dict(cfg))
    assert "AKIA123" not in text and "s3cr3t" not in text


def test_section_override_keeps_the_parents_defaults():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Inner:
        a: int = 1
        b: int = 2

    @dataclasses.dataclass(frozen=True)
    class Outer:
        inner: Inner = dataclasses.field(default_factory=lambda: Inner(a=10, b=20))

    cfg = from_dict(Outer, {"inner": {"b": 5}})
    assert cfg.inner == Inner(a=10, b=5)  # not Inner(a=1, b=5)


# ----------------------------------------------------------------------------- ranges (issue 16)

import dataclasses  # noqa: E402
import typing  # noqa: E402

from jobs.config_benchmark import BenchmarkConfig  # noqa: E402
from jobs.config_demo import DemoConfig  # noqa: E402
from jobs.config_learn_bases import LearnBasesConfig  # noqa: E402
from jobs.config_quality import QualityJobConfig  # noqa: E402
from jobs.config_restore import RestoreJobConfig  # noqa: E402
from jobs.config_train_sr import TrainSRConfig  # noqa: E402
from restore_core import config as config_module  # noqa: E402
from restore_core.config import QualityConfig, field_range  # noqa: E402


def _config_classes() -> list[type]:
    """Every config dataclass: the core's sections and each job's tree."""
    import importlib
    import pkgutil

    import jobs

    names = ["restore_core.config_loader", "restore_core.config_sections", "restore_core.quality_config"]
    names += [f"jobs.{m.name}" for m in pkgutil.iter_modules(jobs.__path__) if m.name.startswith("config_")]
    modules = [importlib.import_module(n) for n in names]
    found = [
        obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == module.__name__
        and obj.__name__ != "Range"
    ]
    assert len(found) > 25, [c.__name__ for c in found]  # the collection itself works
    return found


def _is_number(tp: typing.Any) -> bool:
    if tp in (int, float):
        return True
    return typing.get_origin(tp) is list and typing.get_args(tp)[0] in (int, float)


def test_every_number_of_every_config_declares_a_range():
    missing = []
    for cls in _config_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if _is_number(hints[f.name]) and field_range(f) is None:
                missing.append(f"{cls.__name__}.{f.name}")
            if field_range(f) is not None:
                # the default itself must lie in the range
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                for v in default if isinstance(default, list) else [default]:
                    assert v in field_range(f), f"{cls.__name__}.{f.name} default {v} outside {field_range(f)}"
    assert not missing, f"numbers without a declared range: {missing}"


@pytest.mark.parametrize(
    ("cls", "override", "key", "shown"),
    [
        (RestoreConfig, "fit.max_iter=0", "fit.max_iter", "0, must be an integer in [1, inf)"),
        (RestoreConfig, "fit.max_iter=-5", "fit.max_iter", "-5"),
        (RestoreConfig, "fit.l1=-0.1", "fit.l1", "-0.1, must be a number in [0, inf)"),
        (RestoreConfig, "fit.prior=-1", "fit.prior", "-1.0"),
        (RestoreConfig, "fit.prior=.nan", "fit.prior", "nan, must be a finite number"),
        (RestoreConfig, "fit.tol=.inf", "fit.tol", "inf, must be a finite number"),
        (RestoreConfig, "fit.stride=0", "fit.stride", "0"),
        (RestoreConfig, "fit.min_observed_fraction=1.5", "fit.min_observed_fraction", "[0, 1]"),
        (RestoreJobConfig, "ray.num_cpus=-1", "ray.num_cpus", "-1"),
        (RestoreJobConfig, "ray.num_cpus_per_actor=0", "ray.num_cpus_per_actor", "(0, inf)"),
        (RestoreJobConfig, "ray.num_gpus_per_actor=1.5", "ray.num_gpus_per_actor", "whole above 1"),
        (RestoreConfig, "input.limit=-1", "input.limit", "-1"),
        (RestoreConfig, "decode.max_pixels=0", "decode.max_pixels", "0"),
        (RestoreConfig, "sr.scale=0", "sr.scale", "(0, 16]"),
        (LearnBasesConfig, "nmf.patch_size=0", "nmf.patch_size", "0"),
        (LearnBasesConfig, "nmf.max_iter=0", "nmf.max_iter", "0"),
        (LearnBasesConfig, "nmf.k=0", "nmf.k", "0"),
        (LearnBasesConfig, "nmf.seed=-1", "nmf.seed", "-1"),
        (TrainSRConfig, "net.channels=[16, 0]", "net.channels[1]", "0"),
        (TrainSRConfig, "train.lr=0", "train.lr", "(0, inf)"),
        (BenchmarkConfig, "rates=[0.3, 1.0]", "rates[1]", "[0, 1)"),
        (DemoConfig, "data.dead_rate=-0.1", "data.dead_rate", "-0.1"),
        (QualityConfig, "near_duplicate_distance=65", "near_duplicate_distance", "[0, 64]"),
        (QualityConfig, "flags.blurry.value=.nan", "flags.blurry.value", "finite"),
        (QualityConfig, "report.history_runs=0", "report.history_runs", "0"),
    ],
)
def test_numbers_outside_their_range_are_refused_with_one_line(cls, override, key, shown):
    with pytest.raises(ConfigError) as info:
        load_config(cls, None, [override])
    message = str(info.value)
    assert f"'{key}'" in message and shown in message and "\n" not in message


def test_nan_in_a_yaml_file_is_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("fit:\n  l1: .NaN\n")
    with pytest.raises(ConfigError, match=r"'fit.l1' is nan, must be a finite number"):
        load_config(RestoreConfig, p)


def test_check_ranges_covers_configs_built_in_code():
    config_module.check_ranges(RestoreConfig())
    bad = RestoreConfig(fit=dataclasses.replace(RestoreConfig().fit, stride=0))
    with pytest.raises(ConfigError, match=r"'fit.stride' is 0"):
        config_module.check_ranges(bad)


# ----------------------------------------------------------------------------- YAML users write (issue 16)


def test_exponent_without_a_dot_is_a_number(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("fit:\n  tol: 1e-4\n  l1: 5E-3\n")
    cfg = load_config(RestoreConfig, p, ["fit.prior=2e-2"])
    assert cfg.fit.tol == 1e-4 and cfg.fit.l1 == 5e-3 and cfg.fit.prior == 0.02


def test_a_date_is_read_as_the_text_written(tmp_path):
    p = tmp_path / "q.yaml"
    p.write_text("run_date: 2024-06-30\n")
    assert load_config(QualityJobConfig, p).run_date == "2024-06-30"
    assert load_config(QualityJobConfig, None, ["run_date=2024-07-01"]).run_date == "2024-07-01"


def test_dates_in_string_keys_and_quoted_exponents():
    cfg = load_config(RestoreConfig, None, ["output.path=2024-06-30", "input.id_column='1e5'"])
    assert cfg.output.path == "2024-06-30" and cfg.input.id_column == "1e5"
    assert load_config(RestoreConfig, None, ["fit.tol='1e-4'"]).fit.tol == 1e-4


def test_whole_numbers_written_as_floats_are_integers(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("decode:\n  max_pixels: 64e6\nfit:\n  stride: 2.0\n")
    cfg = load_config(RestoreConfig, p)
    assert cfg.decode.max_pixels == 64_000_000 and isinstance(cfg.decode.max_pixels, int) and cfg.fit.stride == 2
    with pytest.raises(ConfigError, match=r"'fit.stride' must be an integer, got 2.5"):
        load_config(RestoreConfig, None, ["fit.stride=2.5"])


def test_the_write_ups_method_is_called_reference_and_its_old_name_seed_still_loads_with_a_warning(caplog):
    import logging

    from jobs.config_benchmark import BenchmarkConfig

    with caplog.at_level(logging.WARNING, logger="restore_core.config"):
        cfg = from_dict(RestoreConfig, {"fit": {"method": "seed", "seed_iter": 7, "seed_lr": 0.5}})
        bench = from_dict(BenchmarkConfig, {"methods": ["seed", "nmf"]})
    assert (cfg.fit.method, cfg.fit.reference_iter, cfg.fit.reference_lr) == ("reference", 7, 0.5)
    assert bench.methods == ["reference", "nmf"]
    assert "fit.method seed is a deprecated name: use fit.method reference" in caplog.text
    assert "config key 'fit.seed_iter' is a deprecated name: use 'fit.reference_iter'" in caplog.text
    assert "methods: seed is a deprecated name: use reference" in caplog.text
    with pytest.raises(ConfigError, match=r"^config key 'fit.seed_iter' is the old name of 'fit.reference_iter'"):
        from_dict(RestoreConfig, {"fit": {"seed_iter": 7, "reference_iter": 8}})
    with pytest.raises(ConfigError, match=r"^config key 'fit.reference_iter' is 0"):
        from_dict(RestoreConfig, {"fit": {"seed_iter": 0}})  # the old name's value is range-checked as the new
