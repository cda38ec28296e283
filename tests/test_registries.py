"""The public registries of server optimizers and datasets, and the ``device`` key.

A user's server optimizer (signed momentum, reading two existing hyper-parameter
keys) and a second dataset (a fixed-seed subset of MNIST's digits 0-4, 2x2-pooled to
14x14, with its own SHA-256 digests) are registered only through the public API,
and a federation runs on them with the real server loop and ClientApp in this
process (tests.federation_harness.DirectGrid). Every global model the server
broadcast is rebuilt from the recorded client replies with the user's rule, exactly.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

import compression
from client.local_round import ClientState, run_local_round
from fedsqueeze.config import ConfigError, RunConfig
from fedsqueeze.data import to_input as mnist_to_input
from fedsqueeze.datasets import (
    ARRAY_KEYS,
    DATASETS,
    Dataset,
    DatasetArrays,
    DatasetError,
    get_dataset,
    load_dataset,
    register_dataset,
    to_input,
)
from fedsqueeze.device import DeviceUnavailable, resolve_device
from fedsqueeze.models import build_model, initial_state, num_parameters
from fedsqueeze.optimizers import SERVER_OPTIMIZERS, ServerOptimizer, build_server_optimizer, register_server_optimizer
from fedsqueeze.protocol.instructions import TrainInstruction
from fedsqueeze.protocol.messages import METRICS, MODEL, UPDATE, record_payloads
from server.aggregate import weighted_mean
from server.checkpoint import load_checkpoint
from tests.federation_harness import read_rows, run_direct

# ----------------------------------------------------------------------------- the user's plugins


class SignedMomentum(ServerOptimizer):
    """Signum on the server: ``m = momentum * m + d``; the step is ``lr * tau * sign(m)``.

    Nothing built in moves every weight by the same magnitude, so the effect is unmistakable.
    """

    def __init__(self, lr: float, momentum: float, tau: float, state=None):
        super().__init__(lr, state)
        self.momentum, self.tau = momentum, tau

    def direction(self, delta):
        m = self.moment("m", delta)
        for k, d in delta.items():
            m[k].mul_(self.momentum).add_(d)
        return {k: self.tau * torch.sign(v) for k, v in m.items()}


DIGITS = "mnist-digits04-14px"
#: SHA-256 (fedsqueeze.datasets.array_sha256) of the derived arrays, computed once and fixed here:
#: a change in MNIST, the derivation or the digest fails the load.
DIGITS_SHA256 = {
    "train_images": "f7020dc49f4a4504f6d143c723d6b6c4c8562b76ef82158d0b5612e0df41a247",
    "train_labels": "e8e7ff628ce28c56a804ec6d77e45221d594e4cda97ac5c0a66eae2b7ba67cce",
    "test_images": "51b717fedb0ad1c84f4b6b544e6c66cf57c723abc825d68e2b11230e891289e2",
    "test_labels": "d09578d8d5d1fa4055cf64b83b3bccfe6942c13bf8d18116f1e5720898bc25b9",
}
SIZES = {"train": 3000, "test": 600}


def load_digits(data_dir):
    """3,000 training and 600 test images of digits 0-4, drawn with a fixed seed, averaged over 2x2 pixels."""
    mnist = load_dataset("mnist", data_dir)
    rng = np.random.default_rng(20261201)
    out = {}
    for split, n in SIZES.items():
        images, labels = np.asarray(getattr(mnist, f"{split}_images")), np.asarray(getattr(mnist, f"{split}_labels"))
        idx = np.sort(rng.choice(np.flatnonzero(labels < 5), size=n, replace=False))
        blocks = images[idx].astype(np.uint16).reshape(n, 14, 2, 14, 2).sum(axis=(2, 4))
        out[f"{split}_images"] = ((blocks + 2) // 4).astype(np.uint8)
        out[f"{split}_labels"] = labels[idx].astype(np.uint8)
    return DatasetArrays(**out, provenance={"derived_from": "mnist", "how": "digits 0-4, seed 20261201, 2x2 mean"})


def digits_dataset(**changes) -> Dataset:
    fields = {"name": DIGITS, "load": load_digits, "num_classes": 5, "input_shape": (1, 14, 14), "mean": 0.1307,
              "std": 0.2817, "checksums": DIGITS_SHA256, "description": "MNIST digits 0-4 at 14x14 (test dataset)"}
    return Dataset(**{**fields, **changes})


@pytest.fixture
def plugins():
    """Register the user's optimizer and dataset through the public API; unregister afterwards."""
    register_server_optimizer("signed-momentum", SignedMomentum, ("server-momentum", "server-tau"))
    register_dataset(digits_dataset())
    yield
    del SERVER_OPTIMIZERS["signed-momentum"]
    del DATASETS[DIGITS]


# ----------------------------------------------------------------------------- the federation on them

FED = {"dataset": DIGITS, "server-optimizer": "signed-momentum", "server-lr": 2.0, "server-momentum": 0.5,
       "server-tau": 1e-3, "model": "seed-cnn", "seed": 11, "num-server-rounds": 3, "fraction-train": 0.5,
       "min-train-nodes": 2, "min-available-nodes": 4, "local-epochs": 1, "batch-size": 25, "lr": 0.05,
       "uplink": "q8", "downlink": "fp32", "downlink-mode": "full", "partition": "dirichlet", "dirichlet-alpha": 1.0}


def test_federation_with_a_registered_optimizer_and_dataset(plugins, tmp_path):
    summary, grid = run_direct(FED, tmp_path, num_supernodes=4)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3

    # the dataset: its classes, size, digests and input shape reached the server, the clients and the model
    assert summary["data"]["dataset"] == DIGITS and summary["data"]["sha256"] == DIGITS_SHA256
    assert summary["data"]["derived_from"] == "mnist"
    with open(tmp_path / "partitions.csv", newline="") as fh:
        parts = list(csv.DictReader(fh))
    assert [k for k in parts[0] if k.startswith("label_")] == [f"label_{c}" for c in range(5)]
    assert sum(int(p["num_examples"]) for p in parts) == SIZES["train"]
    # seed-cnn on (1, 14, 14) and 5 classes: conv 1->16 (160), conv 16->32 (4,640), fc 32*3*3 -> 5 (1,445)
    assert summary["num_params"] == 160 + 4_640 + 288 * 5 + 5 == 6_245

    # the optimizer: rebuild every broadcast model from the recorded replies with the user's rule
    lr, beta, tau = FED["server-lr"], FED["server-momentum"], FED["server-tau"]
    train = [ex for ex in grid.exchanges if ex[0][0].metadata.message_type == "train"]
    assert len(train) == 3
    w = initial_state("seed-cnn", FED["seed"], DIGITS)
    m = None
    for r, (sent, replies) in enumerate(train, start=1):
        (broadcast,) = {record_payloads(s.content[MODEL])[0] for s in sent}
        got = compression.decode(broadcast)
        assert all(torch.equal(got[k], w[k]) for k in w), f"round {r}: broadcast model is not w_{r - 1}"
        ok = [rep for rep in replies if not rep.has_error()]
        assert len(ok) == 2
        counts = [int(rep.content[METRICS]["num-examples"]) for rep in ok]
        updates = [compression.decode(record_payloads(rep.content[UPDATE])[0]) for rep in ok]
        d = weighted_mean(updates, counts)
        m = {k: d[k].clone() for k in d} if m is None else {k: m[k] * beta + d[k] for k in d}
        step = {k: lr * (tau * torch.sign(m[k])) for k in w}
        w_next = {k: w[k] + step[k] for k in w}
        # the signature of this optimizer: every weight with a non-zero momentum moves by exactly lr * tau
        moved = torch.cat([(w_next[k] - w[k]).abs().flatten() for k in w])
        assert moved.max().item() == pytest.approx(lr * tau, rel=1e-3)
        w = w_next
    ckpt = load_checkpoint(tmp_path, RunConfig.from_mapping({**FED, "out-dir": str(tmp_path)}).to_mapping())
    assert all(torch.equal(ckpt.weights[k], w[k]) for k in w)
    assert set(ckpt.optimizer_state) == {"m"} and all(torch.equal(ckpt.optimizer_state["m"][k], m[k]) for k in m)

    rows = read_rows(tmp_path)
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    # the server evaluated on the dataset's own 600 test images: recompute round 0 independently
    test = load_digits(None)
    x = (torch.from_numpy(test.test_images.astype(np.float32)) / 255.0 - 0.1307) / 0.2817
    model = build_model("seed-cnn", DIGITS)
    model.load_state_dict(initial_state("seed-cnn", FED["seed"], DIGITS))
    with torch.no_grad():
        predicted = model.eval()(x.unsqueeze(1)).argmax(1).numpy()
    assert float(rows[0]["test_accuracy"]) == pytest.approx(float((predicted == test.test_labels).mean()), abs=1e-4)


# ----------------------------------------------------------------------------- registries: parse-time validation


def test_config_reads_the_live_registries(plugins):
    cfg = RunConfig.from_mapping({"server-optimizer": "signed-momentum", "dataset": DIGITS})
    assert cfg.dataset == DIGITS and cfg.server_optimizer == "signed-momentum"
    del SERVER_OPTIMIZERS["signed-momentum"]
    with pytest.raises(ConfigError, match=r"'server-optimizer'.*registered server optimizer.*'fedadam'"):
        RunConfig.from_mapping({"server-optimizer": "signed-momentum"})
    register_server_optimizer("signed-momentum", SignedMomentum, ("server-momentum", "server-tau"))


def test_unknown_dataset_is_a_config_error_naming_the_registered_ones():
    with pytest.raises(ConfigError, match=r"'dataset'.*registered dataset.*'mnist'.*'cifar10'"):
        RunConfig.from_mapping({"dataset": "cifar10"})


def test_built_in_optimizers_are_registered_through_the_same_api():
    assert {"fedavg", "fedavgm", "fedadam"} <= set(SERVER_OPTIMIZERS)
    assert SERVER_OPTIMIZERS["fedavgm"].keys == ("server-momentum",)
    cfg = RunConfig.from_mapping({"server-optimizer": "fedadam", "server-beta1": 0.5})
    from fedsqueeze.optimizers import server_optimizer_from_config

    opt = server_optimizer_from_config(cfg)
    assert (opt.lr, opt.beta1, opt.beta2, opt.tau) == (cfg.server_lr, 0.5, cfg.server_beta2, cfg.server_tau)


@pytest.mark.parametrize("args, error, match", [
    (("fedavg", SignedMomentum), ValueError, "already registered"),
    (("my opt", SignedMomentum), ValueError, "without spaces"),
    (("x", "not callable"), TypeError, "must be callable"),
    (("x", SignedMomentum, ("momentum",)), ValueError, r"key\(s\) \['momentum'\] are not server-\* run-config keys"),
    (("x", SignedMomentum, ("server-lr",)), ValueError, r"key\(s\) \['server-lr'\] are not server-\* run-config keys"),
])
def test_bad_optimizer_registrations_are_refused(args, error, match):
    with pytest.raises(error, match=match):
        register_server_optimizer(*args)
    assert "x" not in SERVER_OPTIMIZERS and "my opt" not in SERVER_OPTIMIZERS


def test_an_optimizer_reading_a_key_the_config_lacks_is_refused_at_parse_time():
    register_server_optimizer("needs-gamma", SignedMomentum, ("server-momentum", "server-gamma"))
    try:
        with pytest.raises(ConfigError, match=r"'server-optimizer'.*reads run-config key\(s\) \['server-gamma'\]"):
            RunConfig.from_mapping({"server-optimizer": "needs-gamma"})
        RunConfig.from_mapping({"server-optimizer": "fedavg"})  # only the optimizer a config names is checked
    finally:
        del SERVER_OPTIMIZERS["needs-gamma"]


def test_a_factory_must_return_a_server_optimizer():
    register_server_optimizer("returns-dict", lambda lr, state: {"lr": lr})
    try:
        with pytest.raises(TypeError, match="returned dict, not a fedsqueeze.optimizers.ServerOptimizer"):
            build_server_optimizer("returns-dict", 1.0)
    finally:
        del SERVER_OPTIMIZERS["returns-dict"]


def test_wrong_checksum_is_refused_at_load(mnist):
    bad = dict(DIGITS_SHA256, test_labels="0" * 64)
    register_dataset(digits_dataset(name="digits-tampered", checksums=bad))
    try:
        with pytest.raises(DatasetError, match=r"'digits-tampered': test_labels has SHA-256 d09578d8.*declares 0000"):
            load_dataset("digits-tampered")
    finally:
        del DATASETS["digits-tampered"]


@pytest.mark.parametrize("changes, match", [
    ({"name": "mnist"}, "already registered"),
    ({"num_classes": 1}, "num_classes must be an int >= 2"),
    ({"input_shape": (1, 0, 14)}, "input_shape must be positive ints"),
    ({"mean": (0.1, 0.2)}, r"per-channel mean needs 1 values"),
    ({"std": 0.0}, "std and scale must be > 0"),
    ({"checksums": {"train_images": "x"}}, "checksums must name exactly"),
])
def test_bad_dataset_declarations_are_refused(changes, match):
    with pytest.raises(DatasetError, match=match):
        register_dataset(digits_dataset(**changes))
    assert DIGITS not in DATASETS


def test_loader_arrays_are_checked_against_the_declaration(mnist):
    def wrong_labels(data_dir):
        a = load_digits(data_dir)
        return DatasetArrays(a.train_images, a.train_labels + 5, a.test_images, a.test_labels)

    register_dataset(digits_dataset(name="digits-labels", load=wrong_labels))
    try:
        with pytest.raises(DatasetError, match=r"train labels span \[5, 9\], outside \[0, 5\)"):
            load_dataset("digits-labels")
    finally:
        del DATASETS["digits-labels"]


def test_mnist_through_the_registry_is_the_same_data_and_tensors(mnist):
    ds = get_dataset("mnist")
    assert (ds.num_classes, ds.input_shape) == (10, (1, 28, 28))
    arrays = load_dataset("mnist")
    assert len(arrays.train_labels) == 60_000 and len(arrays.test_labels) == 10_000
    assert arrays.provenance["sha256_verified"] is True
    assert torch.equal(to_input(arrays.train_images[:500], "mnist"), mnist_to_input(mnist.train_images[:500]))


def test_models_take_the_dataset_shape_and_keep_mnist_parameters(plugins):
    mnist_model = build_model("mcmahan-cnn")
    assert num_parameters(mnist_model) == 1_663_370
    a, b = initial_state("seed-cnn", 3), initial_state("seed-cnn", 3, "mnist")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("seed-cnn", "mcmahan-cnn", "mlp-2nn"):
        model = build_model(name, DIGITS)
        assert model(torch.zeros(3, 1, 14, 14)).shape == (3, 5)


def test_per_channel_normalisation():
    rgb = Dataset(name="rgb-test", load=load_digits, num_classes=5, input_shape=(3, 2, 2), mean=(0.0, 0.5, 1.0),
                  std=(1.0, 2.0, 4.0), checksums={k: "" for k in ARRAY_KEYS})
    images = np.full((2, 3, 2, 2), 255, dtype=np.uint8)
    x = to_input(images, rgb)
    assert x.shape == (2, 3, 2, 2)
    assert x[0, :, 0, 0].tolist() == [1.0, 0.25, 0.0]


@pytest.mark.slow  # PT2E export / int8 lowering
def test_model_compression_follows_the_dataset_input_shape(plugins, tmp_path):
    """int8 export, oneDNN lowering, .pt2 artifacts and QAT graphs of a 14x14, 5-class model (not MNIST's shape)."""
    from fedsqueeze import modelzip as mz

    model = build_model("seed-cnn", DIGITS).eval()
    x, y = to_input(load_digits(None).test_images[:64], DIGITS), torch.from_numpy(load_digits(None).test_labels[:64])
    int8 = mz.quantize_static_int8(model, mz.observe_ranges(model, x), input_shape=get_dataset(DIGITS).input_shape)
    report = mz.stage_report("int8", int8, x, y.long(), tmp_path / "int8.pt2", repeats=2)
    assert report["executor"] == "onednn-int8" and report["accuracy"] == report["reloaded_accuracy"]
    assert mz.load_artifact(tmp_path / "int8.pt2")(x[:3]).shape == (3, 5)
    assert mz.prepare_qat(model, input_shape=(1, 14, 14))(x[:2]).shape == (2, 5)


# ----------------------------------------------------------------------------- the device key


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:-1", "cuda:01", "CPU", "cuda:0 ", ""])
def test_invalid_device_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=r"config key 'device': must be one of auto \| cpu \| cuda \| cuda:N"):
        RunConfig.from_mapping({"device": bad})


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    assert RunConfig().device == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_clear_error(device, tmp_path, mnist):
    with pytest.raises(DeviceUnavailable, match=rf"device '{device}' requested, but this process sees no CUDA.*"
                                                 "client-resources-num-gpus"):
        resolve_device(device)
    cfg = {"model": "seed-cnn", "num-server-rounds": 1, "min-available-nodes": 2, "device": device}
    with pytest.raises(DeviceUnavailable):  # the server stops before round 0
        run_direct(cfg, tmp_path, num_supernodes=2)
    ins = TrainInstruction(round=1, seed=0, model="seed-cnn", partition="iid", dirichlet_alpha=0.5,
                           shards_per_client=2, local_epochs=1, batch_size=10, lr=0.05, momentum=0.0,
                           weight_decay=0.0, client_threads=1, data_dir="", uplink="fp32", downlink_mode="full",
                           base_version=0, target_version=1, device=device)
    with pytest.raises(DeviceUnavailable):  # and so does a client told to train on a GPU it lacks
        run_local_round(ins, [], ClientState(), 0, 2)


def test_new_instruction_keys_are_sent_only_when_not_default():
    common = {"round": 1, "seed": 0, "model": "seed-cnn", "partition": "iid", "dirichlet_alpha": 0.5,
              "shards_per_client": 2, "local_epochs": 1, "batch_size": 10, "lr": 0.05, "momentum": 0.0,
              "weight_decay": 0.0, "client_threads": 1, "data_dir": "", "uplink": "fp32", "downlink_mode": "full",
              "base_version": 0, "target_version": 1}
    plain = TrainInstruction(**common).to_record()
    assert "dataset" not in plain and "device" not in plain  # messages of existing runs keep their bytes
    custom = TrainInstruction(**common, dataset=DIGITS, device="auto")
    assert custom.to_record()["dataset"] == DIGITS and custom.to_record()["device"] == "auto"
    assert TrainInstruction.from_record(custom.to_record()) == custom
    assert TrainInstruction.from_record(plain) == TrainInstruction(**common)


def test_runner_reserves_gpus_for_clients_on_request():
    from simulations import run as runner

    args, _, overrides = runner.parse_cli(["stc", "--out", "/tmp/x", "--client-gpus", "0.25", "device='auto'"])
    assert args.client_gpus == 0.25 and overrides["device"] == "auto"
    assert runner.parse_cli(["stc", "--out", "/tmp/x"])[0].client_gpus == 0.0
    with pytest.raises(SystemExit):
        runner.parse_cli(["stc", "--out", "/tmp/x", "--client-gpus", "-1"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_federation_trains_and_evaluates_on_cuda(tmp_path, mnist):
    torch.cuda.reset_peak_memory_stats()
    cfg = {"model": "seed-cnn", "seed": 4, "num-server-rounds": 2, "fraction-train": 0.5, "min-available-nodes": 4,
           "local-epochs": 1, "batch-size": 32, "uplink": "q8", "downlink": "fp32", "downlink-mode": "full",
           "device": "cuda", "server-optimizer": "fedavgm"}
    summary, grid = run_direct(cfg, tmp_path, num_supernodes=4)
    assert summary["status"] == "completed" and summary["config"]["device"] == "cuda"
    assert torch.cuda.max_memory_allocated() > 0  # clients trained and the server evaluated on the GPU
    sent = [m for m in grid.exchanges[-1][0] if m.metadata.message_type == "train"]
    assert all(m.content["config"]["device"] == "cuda" for m in sent)
    # what left the GPU is ordinary CPU data: payloads decode, the global model is finite and learned
    reply = next(r for r in grid.exchanges[-1][1] if not r.has_error())
    update = compression.decode(record_payloads(reply.content[UPDATE])[0])
    assert all(v.device.type == "cpu" and torch.isfinite(v).all() for v in update.values())
    assert summary["final_accuracy"] > 0.5
    assert math.isfinite(float(read_rows(tmp_path)[-1]["test_loss"]))
