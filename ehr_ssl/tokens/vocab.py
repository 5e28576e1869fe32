"""The token vocabulary's fixed part: special tokens, segments and the per-token columns.

Ids 0-5 are the special tokens in this order, in every tokenizer; codes follow. Segment ids mark
where a token comes from (0 static, 1 history, 2 current visit); value bin 0 means no value.
"""

SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[CLS]", "[UNK]", "[HIST]", "[VISIT]")
PAD_ID, MASK_ID, CLS_ID, UNK_ID, HIST_ID, VISIT_ID = range(len(SPECIAL_TOKENS))
# Structural tokens, never events ([UNK] is an event: a code too rare for the vocabulary).
NOT_EVENT_IDS = (PAD_ID, MASK_ID, CLS_ID, HIST_ID, VISIT_ID)
SEGMENT_STATIC, SEGMENT_HISTORY, SEGMENT_CURRENT = 0, 1, 2
NO_VALUE_BIN = 0
TOKEN_COLUMNS = ("input_ids", "value_bins", "time_deltas", "segment_ids")
