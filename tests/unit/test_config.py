import pytest

from restore_core.config import RestoreConfig, from_dict, load_config, to_dict
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
