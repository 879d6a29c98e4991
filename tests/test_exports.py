"""The public surface: what ``import stead`` promises."""

import stead


def test_every_public_name_is_exported_and_importable() -> None:
    for name in stead.__all__:
        assert hasattr(stead, name), name
    assert sorted(stead.__all__) == stead.__all__


def test_public_surface_includes_the_documented_entry_points() -> None:
    assert {"tool", "Agent", "AgentCatalog", "RunRequest", "RunResult", "ScriptedModel",
            "OpenAIModel", "Settings"} <= set(stead.__all__)
