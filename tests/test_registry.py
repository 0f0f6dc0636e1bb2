import pytest

from unprune_jax.registry import Registry


def test_register_get_describe_in_order():
    reg = Registry("pruner")
    reg.register("omp", "one-shot", 1)

    @reg.register("imp", "iterative")
    def imp():
        return 2

    assert reg.get("omp") == 1 and reg.get("imp") is imp
    assert reg.describe() == {"omp": "one-shot", "imp": "iterative"}
    assert list(reg) == ["omp", "imp"] and "omp" in reg and len(reg) == 2


def test_unknown_name_suggests_the_closest_and_duplicates_are_refused():
    reg = Registry("pruner")
    reg.register("omp", "one-shot", 1)
    with pytest.raises(ValueError,
                       match=r"unknown pruner 'ompp'; known: \['omp'\]\. Did you mean 'omp'\?"):
        reg.get("ompp")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("omp", "again", 2)


def test_unregister_removes_and_returns_and_refuses_unknown_names():
    reg = Registry("pruner")
    reg.register("omp", "one-shot", 1)
    reg.register("imp", "iterative", 2)
    assert reg.unregister("omp") == 1
    assert list(reg) == ["imp"] and "omp" not in reg
    with pytest.raises(ValueError, match=r"unknown pruner 'omp'; known: \['imp'\]"):
        reg.get("omp")
    with pytest.raises(ValueError, match="unknown pruner 'sfp'"):
        reg.unregister("sfp")
    reg.register("omp", "again", 3)  # the name is free again
    assert reg.get("omp") == 3
