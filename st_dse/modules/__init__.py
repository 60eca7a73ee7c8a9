"""The sentence-transformers modules st_dse adds: the pair head and the original DSE pooling."""

from st_dse.modules.pair_head import PairHead
from st_dse.modules.top_layers import TopLayersConcat

__all__ = ["PairHead", "TopLayersConcat"]
