//! shardgate node (under construction).
