-- One row per POST /write through shardgate's router (the contract's JSON endpoint).
local headers = { ["Content-Type"] = "application/json" }

function request()
   return wrk.format("POST", "/write", headers, '{"data":[' .. row_json(next_id()) .. ']}')
end
