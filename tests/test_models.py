import pytest
import torch

from fedsqueeze.models import build_model, initial_state, num_parameters


@pytest.mark.parametrize("name,count", [("seed-cnn", 20_490), ("mcmahan-cnn", 1_663_370), ("mlp-2nn", 199_210)])
def test_parameter_counts_and_output_shape(name, count):
    model = build_model(name)
    assert num_parameters(model) == count
    assert tuple(model(torch.zeros(3, 1, 28, 28)).shape) == (3, 10)


def test_initial_state_is_a_pure_function_of_seed():
    a, b, c = initial_state("seed-cnn", 1), initial_state("seed-cnn", 1), initial_state("seed-cnn", 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet")
