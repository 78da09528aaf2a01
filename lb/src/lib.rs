//! shardgate lb (under construction).
