-- One put per request through etcd's gRPC gateway (POST /v3/kv/put, key and value base64):
-- key "stud/<id>", value the same row JSON that shardgate stores.
local headers = { ["Content-Type"] = "application/json" }
local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local sextet = {}
for i = 1, 64 do sextet[i - 1] = ALPHABET:sub(i, i) end

local function base64(s)
   local out, n = {}, #s
   for i = 1, n, 3 do
      local a, b, c = s:byte(i, i + 2)
      local v = a * 65536 + (b or 0) * 256 + (c or 0)
      local c1 = math.floor(v / 262144) % 64
      local c2 = math.floor(v / 4096) % 64
      local c3 = math.floor(v / 64) % 64
      local c4 = v % 64
      out[#out + 1] = sextet[c1] .. sextet[c2]
         .. (b and sextet[c3] or "=") .. (c and sextet[c4] or "=")
   end
   return table.concat(out)
end

function request()
   local id = next_id()
   local body = string.format('{"key":"%s","value":"%s"}',
                              base64("stud/" .. id), base64(row_json(id)))
   return wrk.format("POST", "/v3/kv/put", headers, body)
end
