import textwrap

import optuna
import pytest

from search_spaces import SpaceError, available, load_space

VALID = """
[fixed]
model = "swin-nano"
epochs = 2

[params.base_lr]
type = "float"
low = 1e-4
high = 1e-2
log = true
role = "nuisance"

[params.accumulation_steps]
type = "categorical"
choices = [1, 2]
role = "scientific"
"""


def write(tmp_path, text, name="space.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", ["overfitting", "quick"])
def test_shipped_spaces_search_the_study_parameters(name):
    space = load_space(name)
    assert {"accumulation_steps", "lr_scaling", "base_lr", "weight_decay", "dropout", "drop_path"} <= set(
        space.params
    )
    assert space.params["accumulation_steps"].role == "scientific"
    assert space.params["lr_scaling"].choices == ("none", "linear", "sqrt")
    assert space.params["base_lr"].log and space.params["weight_decay"].log
    assert space.baseline["accumulation_steps"] == 1 and space.baseline["lr_scaling"] == "none"
    assert set(space.roles().values()) == {"scientific", "nuisance", "fixed"}
    assert name in available()


def test_overfitting_searches_accumulation_up_to_16():
    assert load_space("overfitting").params["accumulation_steps"].choices == (1, 2, 4, 8, 16)


def test_a_path_loads_and_suggests(tmp_path):
    space = load_space(str(write(tmp_path, VALID)))
    trial = optuna.create_study().ask()
    params = space.suggest(trial)
    assert 1e-4 <= params["base_lr"] <= 1e-2 and params["accumulation_steps"] in (1, 2)
    assert space.settings("quick") == {"model": "swin-nano", "epochs": 2}


@pytest.mark.parametrize(
    ("edit", "key", "message"),
    [
        (
            lambda t: t.replace('type = "float"', 'type = "complex"'),
            "params.base_lr.type",
            "unknown type 'complex'",
        ),
        (
            lambda t: t.replace("low = 1e-4", "low = 1e-1"),
            "params.base_lr",
            "low (0.1) must be < high (0.01)",
        ),
        (lambda t: t.replace('role = "nuisance"\n', ""), "params.base_lr.role", "missing"),
        (lambda t: t.replace("high = 1e-2\n", ""), "params.base_lr.high", "missing"),
        (
            lambda t: t.replace("[params.base_lr]", "[params.learning_speed]"),
            "params.learning_speed",
            "not a TrainConfig field",
        ),
        (
            lambda t: t.replace('model = "swin-nano"', 'colour = "blue"'),
            "fixed.colour",
            "not a TrainConfig field",
        ),
        (
            lambda t: t.replace("choices = [1, 2]", "choices = []"),
            "params.accumulation_steps.choices",
            "missing or empty",
        ),
        (
            lambda t: t.replace('role = "scientific"', 'role = "fixed"'),
            "params.accumulation_steps.role",
            "unknown role 'fixed'",
        ),
        (lambda t: t.replace("low = 1e-4", "low = 0.0"), "params.base_lr.low", "must be > 0 on a log range"),
        (lambda t: t + "\n[baseline]\nbase_lr = 1.0\n", "baseline.base_lr", "outside the parameter's range"),
        (
            lambda t: t.replace("epochs = 2", "epochs = 2\ndataset = 'mnist'"),
            "fixed.dataset",
            "not a TrainConfig field",
        ),
        (lambda t: t.replace("[fixed]", "[fixd]"), "fixd", "unknown key"),
    ],
)
def test_invalid_space_names_file_and_key(tmp_path, edit, key, message):
    path = write(tmp_path, edit(VALID))
    with pytest.raises(SpaceError) as info:
        load_space(str(path))
    text = str(info.value)
    assert text.startswith(f"{path}: {key}: "), text
    assert message in text


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(SpaceError, match="no such search-space file; known spaces: .*quick"):
        load_space("nonexistent")
    with pytest.raises(SpaceError, match="not valid TOML"):
        load_space(str(write(tmp_path, "[params\n")))


def test_an_integer_parameter_is_checked_with_integer_values(tmp_path):
    from study.lib.data import load_raw
    from study.lib.objective import space_config
    from study.lib.session import check_space

    path = write(
        tmp_path, VALID.replace('type = "categorical"\nchoices = [1, 2]', 'type = "int"\nlow = 1\nhigh = 4')
    )
    space = load_space(str(path))
    assert space.params["accumulation_steps"].type == "int"
    baseline = check_space(space, space_config(space, "quick", load_raw("digits", "data"), dataset="digits"))
    assert baseline.accumulation_steps == 1


def test_fixing_a_parameter_makes_one_stratum_of_the_space():
    from search_spaces import SpaceError, load_space

    space = load_space("overfitting")
    stratum = space.fixing({"accumulation_steps": "4", "lr_scaling": "none"})
    assert "accumulation_steps" not in stratum.params and stratum.fixed["accumulation_steps"] == 4
    assert stratum.fixed["lr_scaling"] == "none" and stratum.roles()["accumulation_steps"] == "fixed"
    assert set(stratum.baseline) == set(stratum.params)  # the baseline keeps the other parameters
    assert stratum.settings("cpu", "cifar10")["epochs"] == 200  # the budget's CIFAR-10 table
    for values, message in (({"epochs": "3"}, "not a searched parameter"), ({"accumulation_steps": "3"}, "not one of"),
                            ({"base_lr": "big"}, "not a number"), ({"base_lr": "1.0"}, "outside")):  # fmt: skip
        with pytest.raises(SpaceError, match=message):
            space.fixing(values)
