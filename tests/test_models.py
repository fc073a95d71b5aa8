import pickle

import pytest
import torch
import torch.nn.functional as F

from recoder_dist.models import RecoderAutoencoder

NUM_ITEMS = 30


@pytest.fixture
def inputs():
    # 3 users: {1: 2.0, 4: 1.0, 7: 2.0}, {} (empty), {0: 1.0, 29: 3.0}
    items = torch.tensor([1, 4, 7, 0, 29])
    values = torch.tensor([2.0, 1.0, 2.0, 1.0, 3.0])
    offsets = torch.tensor([0, 3, 3, 5])
    return items, values, offsets


def dense_input(items, values, offsets):
    rows = torch.repeat_interleave(torch.arange(len(offsets) - 1), offsets.diff())
    x = torch.zeros(len(offsets) - 1, NUM_ITEMS)
    x[rows, items] = values
    return x


@pytest.mark.parametrize("hidden_sizes,tied", [((8,), False), ((8, 5, 3), False),
                                               ((8, 5), True)])
def test_target_decoder_equals_full_columns(inputs, hidden_sizes, tied):
    torch.manual_seed(0)
    model = RecoderAutoencoder(NUM_ITEMS, hidden_sizes, tied=tied).eval()
    with torch.no_grad():
        model.output_bias.normal_()  # zero-initialised: make column mix-ups visible
        full = model(*inputs, None)
        targets = torch.tensor([0, 3, 4, 17, 29])
        restricted = model(*inputs, targets)
    assert full.shape == (3, NUM_ITEMS)
    assert restricted.shape == (3, 5)
    torch.testing.assert_close(restricted, full[:, targets])


@pytest.mark.parametrize("hidden_sizes,tied", [((8,), False), ((8, 5), False), ((8, 5), True)])
def test_forward_is_hidden_against_target_rows(inputs, hidden_sizes, tied):
    torch.manual_seed(3)
    model = RecoderAutoencoder(NUM_ITEMS, hidden_sizes, tied=tied).eval()
    targets = torch.tensor([2, 4, 29])
    with torch.no_grad():
        model.output_bias.normal_()
        z = model.hidden(*inputs)
        weight, bias = model.target_rows(targets)
        whole_weight, whole_bias = model.target_rows(None)
        assert z.shape == (3, 8)
        assert weight.shape == (3, 8) and bias.shape == (3,)
        torch.testing.assert_close(weight, model.output_table[targets])
        torch.testing.assert_close(bias, model.output_bias[targets])
        assert whole_weight.shape == (NUM_ITEMS, 8) and whole_bias.shape == (NUM_ITEMS,)
        torch.testing.assert_close(model(*inputs, targets), z @ weight.t() + bias)
        torch.testing.assert_close(model(*inputs, None), z @ whole_weight.t() + whole_bias)


@pytest.mark.parametrize("activation,fn", [("tanh", torch.tanh), ("relu", torch.relu),
                                           ("sigmoid", torch.sigmoid),
                                           ("identity", lambda x: x)])
def test_first_layer_is_dense_matmul_of_normalized_input(inputs, activation, fn):
    torch.manual_seed(1)
    model = RecoderAutoencoder(NUM_ITEMS, (6,), activation=activation, input_dropout=0.5).eval()
    with torch.no_grad():
        model.encoder_bias.normal_()
        x = F.normalize(dense_input(*inputs), p=2, dim=1)
        expected = fn(x @ model.item_embedding.weight + model.encoder_bias)
        torch.testing.assert_close(model.hidden(*inputs), expected)  # one layer: hidden is the encoder
        # user 0: norm of (2, 1, 2) is 3
        torch.testing.assert_close(x[0, [1, 4, 7]], torch.tensor([2 / 3, 1 / 3, 2 / 3]))


def test_deep_forward_matches_dense_reference(inputs):
    torch.manual_seed(2)
    model = RecoderAutoencoder(NUM_ITEMS, (8, 4), activation="relu").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        x = F.normalize(dense_input(*inputs), dim=1)
        h = torch.relu(x @ model.item_embedding.weight + model.encoder_bias)
        z = torch.relu(model.encoder_layers[0](h))
        h2 = torch.relu(z @ model.decoder_weights[0].t() + model.decoder_biases[0])
        expected = h2 @ model.output_weight.t() + model.output_bias
        torch.testing.assert_close(model(*inputs), expected)


def test_tied_weights_share_storage():
    model = RecoderAutoencoder(NUM_ITEMS, (8, 4), tied=True)
    names = {n for n, _ in model.named_parameters()}
    assert "output_weight" not in names and not any(n.startswith("decoder_weights") for n in names)
    assert model.output_table is model.item_embedding.weight
    assert model.item_vectors().data_ptr() == model.item_embedding.weight.data_ptr()
    untied = RecoderAutoencoder(NUM_ITEMS, (8, 4))
    assert untied.item_vectors().data_ptr() == untied.output_weight.data_ptr()
    assert untied.item_vectors().shape == (NUM_ITEMS, 8)


def test_tied_decoder_gradient_reaches_encoder_table(inputs):
    model = RecoderAutoencoder(NUM_ITEMS, (8, 4), tied=True, input_dropout=0.0)
    model(*inputs, torch.tensor([2, 3])).sum().backward()
    grad = model.item_embedding.weight.grad
    # rows 2 and 3 are decoder-only targets, not inputs: tied, they still get gradient
    assert grad[2].abs().sum() > 0 and grad[3].abs().sum() > 0
    assert model.encoder_layers[0].weight.grad is not None


def test_dropout_only_in_training(inputs):
    torch.manual_seed(3)
    model = RecoderAutoencoder(NUM_ITEMS, (16, 8), input_dropout=0.5, bottleneck_dropout=0.5)
    model.eval()
    a, b = model(*inputs), model(*inputs)
    torch.testing.assert_close(a, b)
    model.train()
    c, d = model(*inputs), model(*inputs)
    assert not torch.allclose(c, d)
    assert not torch.allclose(a, c)
    # in evaluation neither dropout applies: the network answers as its noise-free twin
    clean = RecoderAutoencoder(NUM_ITEMS, (16, 8), input_dropout=0.0, bottleneck_dropout=0.0)
    clean.load_state_dict(model.state_dict())
    torch.testing.assert_close(model.eval().hidden(*inputs), clean.train().hidden(*inputs))


def test_no_noise_train_equals_eval(inputs):
    model = RecoderAutoencoder(NUM_ITEMS, (8,), input_dropout=0.0, bottleneck_dropout=0.0)
    torch.testing.assert_close(model.train()(*inputs), model.eval()(*inputs))


def test_input_dropout_scales_kept_values():
    # identity activation, all weights 1, one user with one item of value 5: the normalized
    # weight is 1; kept, it is scaled to 1 / (1 - p) = 4 and each logit sums 3 hidden units
    model = RecoderAutoencoder(NUM_ITEMS, (3,), activation="identity", input_dropout=0.75)
    with torch.no_grad():
        model.item_embedding.weight.fill_(1.0)
        model.output_weight.fill_(1.0)
    items, values, offsets = torch.tensor([5]), torch.tensor([5.0]), torch.tensor([0, 1])
    torch.manual_seed(4)
    with torch.no_grad():
        seen = {round(float(model.train()(items, values, offsets, torch.tensor([0]))), 4)
                for _ in range(50)}
        assert seen == {0.0, 12.0}
        assert float(model.eval()(items, values, offsets, torch.tensor([0]))) == pytest.approx(3.0)


def test_item_parameter_names_and_groups():
    model = RecoderAutoencoder(NUM_ITEMS, (8, 4))
    names = dict(model.named_parameters())
    assert model.item_parameter_names() == {"item_embedding.weight", "output_weight",
                                            "output_bias"}
    assert model.item_parameter_names() <= names.keys()
    assert model.bias_parameter_names() == {"encoder_bias", "encoder_layers.0.bias",
                                            "decoder_biases.0", "output_bias"}
    groups = model.parameter_groups(0.01)
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in groups}
    assert by_decay[0.0] == {id(names[n]) for n in model.bias_parameter_names()}
    assert by_decay[0.01] | by_decay[0.0] == {id(p) for p in model.parameters()}
    assert not by_decay[0.01] & by_decay[0.0]
    item_groups = model.parameter_groups(0.01, names=model.item_parameter_names())
    assert sum(len(g["params"]) for g in item_groups) == 3
    torch.optim.Adam(groups, lr=0.1)  # accepted as optimizer groups
    assert RecoderAutoencoder(NUM_ITEMS, (8,), tied=True).item_parameter_names() == {
        "item_embedding.weight", "output_bias"}


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="activation"):
        RecoderAutoencoder(NUM_ITEMS, (8,), activation="swish")
    with pytest.raises(ValueError, match="input_dropout"):
        RecoderAutoencoder(NUM_ITEMS, (8,), input_dropout=1.0)


def test_model_pickles(inputs):
    model = RecoderAutoencoder(NUM_ITEMS, (8,), activation="identity").eval()
    clone = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(clone(*inputs), model(*inputs))


# --- the variational option (Mult-VAE) ----------------------------------------------------------

def test_variational_model_scores_with_the_mean_in_eval_mode(inputs):
    """Eval: deterministic, the latent is the last encoder layer's output (no sampling, no
    activation), decoded as usual; the KL term is that of the mean and the log-variance layer."""
    from recoder_dist.losses import gaussian_kl
    torch.manual_seed(4)
    model = RecoderAutoencoder(NUM_ITEMS, (8, 5), variational=True).eval()
    with torch.no_grad():
        first, second = model(*inputs), model(*inputs)
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        x = F.normalize(dense_input(*inputs), dim=1)
        h = torch.tanh(x @ model.item_embedding.weight + model.encoder_bias)
        mean = model.encoder_layers[0](h)
        log_variance = model.variance_layer(h)
        decoded = torch.tanh(mean @ model.decoder_weights[0].t() + model.decoder_biases[0])
        torch.testing.assert_close(first, decoded @ model.output_weight.t() + model.output_bias)
        torch.testing.assert_close(model.hidden(*inputs), decoded)  # decoded from the mean itself
        z, kl = model.hidden_kl(*inputs)
        torch.testing.assert_close(kl, gaussian_kl(mean, log_variance))


def test_variational_model_samples_its_latent_in_training(inputs):
    torch.manual_seed(5)
    model = RecoderAutoencoder(NUM_ITEMS, (8, 5), variational=True, input_dropout=0.0).train()
    with torch.no_grad():
        model.variance_layer.bias.fill_(1.0)  # a visible variance
        first, second = model(*inputs), model(*inputs)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(first.mean(), second.mean(), atol=1.0, rtol=0)  # same model, noise only


def test_variational_needs_a_latent_layer():
    from recoder_dist.config import ConfigError, load_config
    with pytest.raises(ValueError, match="at least two hidden_sizes"):
        RecoderAutoencoder(NUM_ITEMS, (8,), variational=True)
    with pytest.raises(ConfigError, match="model.variational"):
        load_config(None, ["model.variational=true", "model.hidden_sizes=[64]"])


def test_plain_model_has_no_kl_term(inputs):
    model = RecoderAutoencoder(NUM_ITEMS, (8, 5)).eval()
    z, kl = model.hidden_kl(*inputs)
    assert kl is None
    torch.testing.assert_close(z, model.hidden(*inputs))
