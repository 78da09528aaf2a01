//! shardgate protocol (under construction).
