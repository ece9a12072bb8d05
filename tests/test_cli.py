"""The `lumina-jax` command line."""

import pytest

from lumina_jax.cli import main


@pytest.mark.slow
def test_info_prints_counts_and_shapes_for_every_patch_size(capsys):
    assert main(["info", "--preset", "tiny", "--frames", "4", "--size", "8", "8",
                 "--forward"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 215,608" in out
    for kind in ("image", "video"):
        for patch in ("1x2", "2x2", "2x4"):
            assert f"{kind} {patch}:" in out
    assert "-> out (2, 4, 4, 8, 8)" in out


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        main(["info", "--preset", "huge"])
