//! shardgate client (under construction).
