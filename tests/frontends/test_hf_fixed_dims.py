"""A transformers model gets dynamic batch and sequence dims by default (slimgraph/api.py
`_hf_dynamic_shapes`). Where its code fixes one (CANINE's downsampling, XLNet, a reshape to a constant),
torch.export refuses the dynamic dim: optimize then compiles for the example's size, says so in the report,
and a call of another size is refused by name. A config without a position table (XLNet's
max_position_embeddings = -1) leaves the sequence unbounded. Before: torch.export's "Constraints violated"
error, and for XLNet "Cannot create Dim with inconsistent min=None, max=-1"."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
import slimgraph  # noqa: E402
from slimgraph.guards import GuardError  # noqa: E402


class FixedConfig(transformers.PretrainedConfig):
    model_type = "slimgraph-fixed-seq"

    def __init__(self, seq=6, max_position_embeddings=-1, **kw):
        super().__init__(**kw)
        self.seq, self.max_position_embeddings = seq, max_position_embeddings


class FixedSeq(transformers.PreTrainedModel):
    """Pools pairs of tokens into a table of a fixed length: the sequence length is part of its code."""
    config_class = FixedConfig

    def __init__(self, config):
        super().__init__(config)
        self.emb = torch.nn.Embedding(32, 8)
        self.mix = torch.nn.Linear(config.seq * 8, 4)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids) * attention_mask[..., None]
        return {"logits": self.mix(h.reshape(input_ids.shape[0], self.config.seq * 8))}


def test_fixed_sequence_compiles_for_the_example_size():
    model = FixedSeq(FixedConfig()).eval()
    kw = {"input_ids": torch.randint(0, 32, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    fast = slimgraph.optimize(model, example_kwargs=kw, target="torch")
    assert any("compiled for the example's sizes only" in n and "seq" in n for n in fast.report.notes)
    for b in (2, 3):   # the batch stays dynamic
        call = {"input_ids": torch.randint(0, 32, (b, 6)), "attention_mask": torch.ones(b, 6, dtype=torch.long)}
        assert torch.allclose(fast(**call)["logits"], model(**call)["logits"], atol=1e-5)
    # the advice fits: this model cannot be made dynamic, so the error does not say to try
    with pytest.raises(GuardError, match="input_ids.*model's code fixes it.*Compile again with an example of this"):
        fast(input_ids=torch.randint(0, 32, (2, 9)), attention_mask=torch.ones(2, 9, dtype=torch.long))
