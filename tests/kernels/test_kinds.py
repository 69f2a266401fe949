"""One vocabulary per concept: the str Enums of bnnkit.kernels.kinds and their kernel twins."""

import pytest

pytest.importorskip("triton")
from bnnkit.estimators import ESTIMATORS  # noqa: E402
from bnnkit.kernels import kinds  # noqa: E402
from bnnkit.kernels.kinds import EstimatorKind, InputKind, OutputKind  # noqa: E402

PREFIX = {InputKind: "_IN_", OutputKind: "_OUT_", EstimatorKind: "_EST_"}


@pytest.mark.parametrize("enum", list(PREFIX))
def test_every_member_has_a_constexpr_twin_with_its_code(enum):
    codes = [member.code for member in enum]
    assert sorted(codes) == list(range(len(enum)))
    for member in enum:
        twin = getattr(kinds, PREFIX[enum] + member.name)
        assert twin.value == member.code, member
    twins = [name for name in vars(kinds) if name.startswith(PREFIX[enum])]
    assert sorted(twins) == sorted(PREFIX[enum] + m.name for m in enum)


def test_values_are_the_words_of_layers_manifests_and_estimators():
    assert [k.value for k in InputKind] == ["int8", "binarize", "packed", "real"]
    assert [k.value for k in OutputKind] == ["acc", "float", "sign_int8", "packed"]
    assert list(ESTIMATORS) == [k.value for k in EstimatorKind] == ["identity_ste", "clipped_ste", "approx_sign", "reste"]
    assert f"{InputKind.PACKED}" == "packed" and int(EstimatorKind.RESTE) == EstimatorKind.RESTE.code


def test_parse_accepts_members_values_and_codes_only():
    assert OutputKind.parse("packed") is OutputKind.PACKED
    assert OutputKind.parse(OutputKind.PACKED.code) is OutputKind.PACKED
    assert InputKind.parse(InputKind.REAL) is InputKind.REAL
    with pytest.raises(ValueError, match="unknown output kind 'bits'; expected one of acc, float, sign_int8, packed"):
        OutputKind.parse("bits")
    with pytest.raises(ValueError, match="unknown input kind True"):
        InputKind.parse(True)  # a bool is not a code
    with pytest.raises(ValueError, match="unknown estimator kind 'packed'"):
        EstimatorKind.parse("packed")
