-- Distinct row ids for write loads, the same sequence for shardgate and etcd.
-- wrk runs one Lua state per thread: thread t of T takes n = offset + t, t + T, t + 2T, ...
-- and writes id = n * ID_MULT mod ID_SPACE. ID_MULT is odd, so this is a permutation of
-- [0, ID_SPACE): no id repeats within a run, and runs with offsets ID_RUN apart never meet
-- (up to 16 runs). ID_MULT ~ 0.618 * ID_SPACE (Fibonacci hashing) moves the top bits at
-- every step, so consecutive writes spread over every shard (Stud_id >> 24 is the shard).
-- Every product stays below 2^53, exact in Lua's doubles.
local ID_SPACE = 67108864   -- 2^26 ids: 4 shards of 2^24
local ID_MULT = 41475557
local ID_RUN = 4194304      -- 2^22 writes at most per run
local threads_started = 0

function setup(thread)
   thread:set("thread_index", threads_started)
   threads_started = threads_started + 1
end

local next_n, stride

-- wrk -s SCRIPT URL -- THREADS RUN_INDEX
function init(args)
   stride = tonumber(args[1])
   next_n = tonumber(args[2]) * ID_RUN + thread_index
end

function next_id()
   local id = (next_n * ID_MULT) % ID_SPACE
   next_n = next_n + stride
   return id
end

function row_json(id)
   return string.format('{"Stud_id":%d,"Stud_name":"name%d","Stud_marks":%d}', id, id, id % 100)
end
