"""Token sequences: vocabulary constants, the Tokenizer, the tokenize stage (in memory, streamed,
incremental), token shards and batching. Depends on ehr_ssl.data only."""
