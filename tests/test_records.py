"""fedsqueeze.protocol.records: one kebab-case mapping for every instruction the server sends."""

import pytest
from flwr.app import ConfigRecord

from fedsqueeze.protocol.instructions import StageQuery, TrainInstruction

QUERY = dict(op="scores", seed=3, model="seed-cnn", partition="iid", dirichlet_alpha=0.5, shards_per_client=2,
             data_dir="", calibration_images=64)


def test_train_instruction_roundtrips_through_a_config_record():
    ins = TrainInstruction(round=2, seed=1, model="seed-cnn", partition="iid", dirichlet_alpha=0.5,
                           shards_per_client=2, local_epochs=1, batch_size=10, lr=0.05, momentum=0.0,
                           weight_decay=0.0, client_threads=1, data_dir="", uplink="stc", downlink_mode="full",
                           base_version=1, target_version=2, qat=True)
    rec = ins.to_record()
    assert rec["local-epochs"] == 1 and rec["qat"] is True and "local_epochs" not in rec
    assert TrainInstruction.from_record(dict(ConfigRecord(rec))) == ins


def test_defaults_may_be_absent_required_keys_may_not():
    rec = TrainInstruction(round=2, seed=1, model="seed-cnn", partition="iid", dirichlet_alpha=0.5,
                           shards_per_client=2, local_epochs=1, batch_size=10, lr=0.05, momentum=0.0,
                           weight_decay=0.0, client_threads=1, data_dir="", uplink="stc", downlink_mode="full",
                           base_version=1, target_version=2).to_record()
    del rec["qat"]  # has a default
    assert TrainInstruction.from_record(rec).qat is False
    del rec["batch-size"]
    with pytest.raises(ValueError, match=r"train config misses keys \['batch-size'\]"):
        TrainInstruction.from_record(rec)


def test_stage_query_roundtrip_and_errors():
    q = StageQuery(**QUERY)
    assert StageQuery.from_record(q.to_record()) == q
    with pytest.raises(ValueError, match=r"stage query misses keys \['calibration-images'\]"):
        StageQuery.from_record({k: v for k, v in q.to_record().items() if k != "calibration-images"})
    with pytest.raises(ValueError, match="unknown stage query op 'prune'"):
        StageQuery.from_record({**q.to_record(), "op": "prune"})
