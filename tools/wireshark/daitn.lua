-- Wireshark dissector for the DA-ITN wire protocol, version 3.
--
-- Contract: docs/protocol.md. A message is a fixed 36-byte header, TLVs inside
-- the header (hdr_len counts 4-byte words), a typed payload of `length` bytes
-- and, when flag AUTH is set, a 40-byte trailer (u64 nonce, 32-byte HMAC tag).
-- Control messages ride UDP 7070; node-to-node messages ride TCP 7000 back to
-- back in the stream (reassembled here with dissect_tcp_pdus).
--
-- Load:  wireshark -X lua_script:tools/wireshark/daitn.lua
--    or  copy this file to ~/.local/lib/wireshark/plugins/
--
-- Every read is bounds-checked first: a short or inconsistent message is
-- reported as expert info in the "Malformed" group (so `_ws.malformed`
-- matches it), never as a Lua error.

local daitn = Proto("daitn", "DA-ITN")

local HEADER_LEN = 36
local AUTH_LEN = 40
local MAGIC = 0x4441
local VERSION = 3

local FLAG_AUTH, FLAG_LAST, FLAG_REPLY = 0x01, 0x02, 0x04

-- ---------------------------------------------------------------- names ----

local msg_types = {
    [1] = "KNOWLEDGE_REPORT", [2] = "TRAIN_REQUEST", [3] = "FEASIBILITY",
    [4] = "ITINERARY", [5] = "MODEL_CHUNK", [6] = "ACK", [7] = "EVAL_REQUEST",
    [8] = "EVAL_VERDICT", [9] = "TASK_RESULT", [10] = "INFERENCE_QUERY",
    [11] = "INFERENCE_RESULT", [12] = "ERROR", [13] = "DATA_SHARD",
}

local tlv_types = {
    [0] = "PAD", [1] = "TARGET_ACCURACY", [2] = "DEADLINE", [3] = "MAX_LATENCY",
    [4] = "MIN_ACCURACY", [5] = "PRIVACY_LEVEL", [6] = "REQUIRED_LABELS",
    [7] = "MAX_HOPS", [8] = "BYTE_BUDGET", [9] = "EPOCHS", [16] = "ITINERARY",
    [17] = "MODEL_DIGEST", [18] = "CHUNK", [19] = "TRANSPORT", [20] = "PARTIES",
    [21] = "END_REASON", [22] = "ACCURACY",
}

local privacy_levels = { [0] = "public", [1] = "trusted nodes only", [2] = "local only" }
local end_reasons = {
    [1] = "target reached", [2] = "deadline", [3] = "max laps",
    [4] = "infeasible", [5] = "error", [6] = "rolled back",
}
local ack_status = { [0] = "ok", [1] = "digest mismatch", [2] = "refused" }

local function short_name(id)   -- for the Info column
    if id == 0xFFFE then return "DCC" end
    if id == 0xFFFF then return "bcast" end
    if id == 0 then return "none" end
    return "h" .. id
end

local function node_name(id)
    if id == 0xFFFE then return "DCC" end
    if id == 0xFFFF then return "broadcast" end
    if id == 0 then return "unspecified" end
    return "h" .. id
end

-- --------------------------------------------------------------- fields ----

local f = {}
local function F(key, pf) f[key] = pf; return pf end

-- header
F("header",        ProtoField.none  ("daitn.header", "Header"))
F("magic",         ProtoField.uint16("daitn.magic", "Magic", base.HEX))
F("version",       ProtoField.uint8 ("daitn.version", "Version", base.DEC))
F("type",          ProtoField.uint8 ("daitn.type", "Type", base.DEC, msg_types))
F("flags",         ProtoField.uint8 ("daitn.flags", "Flags", base.HEX))
F("flags_auth",    ProtoField.bool  ("daitn.flags.auth", "AUTH (trailer present)", 8, nil, FLAG_AUTH))
F("flags_last",    ProtoField.bool  ("daitn.flags.last", "LAST (last chunk)", 8, nil, FLAG_LAST))
F("flags_reply",   ProtoField.bool  ("daitn.flags.reply", "REPLY", 8, nil, FLAG_REPLY))
F("hdr_len",       ProtoField.uint8 ("daitn.hdr_len", "Header length (words)", base.DEC))
F("hop_count",     ProtoField.uint8 ("daitn.hop_count", "Hop count", base.DEC))
F("hop_limit",     ProtoField.uint8 ("daitn.hop_limit", "Hop limit", base.DEC))
F("task_id",       ProtoField.uint32("daitn.task_id", "Task id", base.DEC))
F("model_id",      ProtoField.uint32("daitn.model_id", "Model id", base.DEC))
F("model_version", ProtoField.uint32("daitn.model_version", "Model version", base.DEC))
F("src",           ProtoField.uint16("daitn.src", "Source node", base.DEC))
F("dst",           ProtoField.uint16("daitn.dst", "Destination node", base.DEC))
F("seq",           ProtoField.uint32("daitn.seq", "Sequence number", base.DEC))
F("ack",           ProtoField.uint32("daitn.ack", "Acknowledged sequence number", base.DEC))
F("length",        ProtoField.uint32("daitn.length", "Payload length", base.DEC))

-- TLVs
F("tlvs",          ProtoField.none  ("daitn.tlvs", "TLVs"))
F("tlv",           ProtoField.none  ("daitn.tlv", "TLV"))
F("tlv_type",      ProtoField.uint8 ("daitn.tlv.type", "TLV type", base.DEC, tlv_types))
F("tlv_len",       ProtoField.uint8 ("daitn.tlv.len", "TLV length", base.DEC))
F("tlv_value",     ProtoField.bytes ("daitn.tlv.value", "TLV value"))
F("padding",       ProtoField.bytes ("daitn.padding", "Padding"))
F("target_accuracy", ProtoField.double("daitn.target_accuracy", "Target accuracy"))
F("deadline",      ProtoField.uint64("daitn.deadline", "Deadline (ms since epoch)", base.DEC))
F("max_latency",   ProtoField.uint32("daitn.max_latency", "Max latency (ms)", base.DEC))
F("min_accuracy",  ProtoField.double("daitn.min_accuracy", "Min accuracy"))
F("privacy",       ProtoField.uint8 ("daitn.privacy", "Privacy level", base.DEC, privacy_levels))
F("required_label", ProtoField.uint8("daitn.required_label", "Required label", base.DEC))
F("max_hops",      ProtoField.uint8 ("daitn.max_hops", "Max hops", base.DEC))
F("epochs",        ProtoField.uint8 ("daitn.epochs", "Local epochs", base.DEC))
F("byte_budget",   ProtoField.uint64("daitn.byte_budget", "Byte budget", base.DEC))
F("itin_ptr",      ProtoField.uint8 ("daitn.itin.ptr", "Itinerary pointer", base.DEC))
F("itin_lap",      ProtoField.uint8 ("daitn.itin.lap", "Lap", base.DEC))
F("itin_max_laps", ProtoField.uint8 ("daitn.itin.max_laps", "Max laps", base.DEC))
F("itin_reserved", ProtoField.uint8 ("daitn.itin.reserved", "Reserved", base.HEX))
F("itin_segment",  ProtoField.uint16("daitn.itin.segment", "Segment", base.DEC))
F("itin_current",  ProtoField.uint16("daitn.itin.current", "Current segment node", base.DEC))
F("digest",        ProtoField.bytes ("daitn.digest", "Model digest (SHA-256)"))
F("chunk_offset",  ProtoField.uint64("daitn.chunk.offset", "Chunk offset", base.DEC))
F("chunk_total",   ProtoField.uint64("daitn.chunk.total", "Model state total bytes", base.DEC))
F("dscp",          ProtoField.uint8 ("daitn.dscp", "DSCP", base.DEC))
F("transport_reserved", ProtoField.bytes("daitn.transport.reserved", "Reserved"))
F("client",        ProtoField.uint16("daitn.client", "Client node", base.DEC))
F("mpvu",          ProtoField.uint16("daitn.mpvu", "MPVU node", base.DEC))
F("end_reason",    ProtoField.uint8 ("daitn.end_reason", "End reason", base.DEC, end_reasons))
F("accuracy",      ProtoField.double("daitn.accuracy", "Accuracy (latest verdict)"))

-- payloads
F("payload",       ProtoField.none  ("daitn.payload", "Payload"))
F("kr_roles",      ProtoField.uint8 ("daitn.kr.roles", "Roles", base.HEX))
F("kr_role_data",  ProtoField.bool  ("daitn.kr.roles.data", "data", 8, nil, 0x01))
F("kr_role_mpvu",  ProtoField.bool  ("daitn.kr.roles.mpvu", "mpvu", 8, nil, 0x02))
F("kr_role_client", ProtoField.bool ("daitn.kr.roles.client", "client", 8, nil, 0x04))
F("kr_role_compute", ProtoField.bool("daitn.kr.roles.compute", "compute", 8, nil, 0x08))
F("kr_role_inference", ProtoField.bool("daitn.kr.roles.inference", "inference", 8, nil, 0x10))
F("kr_n",          ProtoField.uint8 ("daitn.kr.n", "Histogram entries", base.DEC))
F("kr_n_models",   ProtoField.uint8 ("daitn.kr.n_models", "Hosted models", base.DEC))
F("kr_reserved",   ProtoField.uint8 ("daitn.kr.reserved", "Reserved", base.HEX))
F("kr_samples",    ProtoField.uint32("daitn.kr.samples", "Samples", base.DEC))
F("kr_vsamples",   ProtoField.uint32("daitn.kr.verification_samples", "Verification samples", base.DEC))
F("kr_report_seq", ProtoField.uint32("daitn.kr.report_seq", "Report sequence number", base.DEC))
F("kr_queue_len",  ProtoField.uint32("daitn.kr.queue_len", "Queue length (work waiting)", base.DEC))
F("kr_capacity",   ProtoField.float ("daitn.kr.capacity", "Capacity (relative compute speed)"))
F("kr_load",       ProtoField.float ("daitn.kr.load", "Load (busy fraction of the last interval)"))
F("kr_service_ms", ProtoField.float ("daitn.kr.service_ms", "Mean inference service time (ms)"))
F("kr_noise_epsilon", ProtoField.float("daitn.kr.noise_epsilon", "Laplace noise epsilon on the histogram"))
F("kr_hist",       ProtoField.uint32("daitn.kr.hist", "Label count", base.DEC))
F("kr_model",      ProtoField.uint32("daitn.kr.model", "Hosted model id", base.DEC))
F("treq_model_bytes", ProtoField.uint64("daitn.treq.model_bytes", "Model bytes", base.DEC))
F("feas_feasible", ProtoField.uint8 ("daitn.feas.feasible", "Feasible", base.DEC, { [0] = "no", [1] = "yes" }))
F("feas_est_seconds", ProtoField.float("daitn.feas.est_seconds", "Estimated seconds"))
F("feas_est_bytes", ProtoField.uint64("daitn.feas.est_bytes", "Estimated bytes", base.DEC))
F("feas_n",        ProtoField.uint8 ("daitn.feas.n", "Reasons", base.DEC))
F("feas_reason_len", ProtoField.uint16("daitn.feas.reason_len", "Reason length", base.DEC))
F("feas_reason",   ProtoField.string("daitn.feas.reason", "Reason", base.UNICODE))
F("itin_policy_len", ProtoField.uint8("daitn.itin.policy_len", "Policy name length", base.DEC))
F("itin_policy",   ProtoField.string("daitn.itin.policy", "Policy", base.UNICODE))
F("chunk_data",    ProtoField.bytes ("daitn.chunk.data", "Model bytes"))
F("ack_next_offset", ProtoField.uint64("daitn.ack.next_offset", "Next offset", base.DEC))
F("ack_status",    ProtoField.uint8 ("daitn.ack.status", "Status", base.DEC, ack_status))
F("verdict_accuracy", ProtoField.float("daitn.verdict.accuracy", "Accuracy"))
F("verdict_loss",  ProtoField.float ("daitn.verdict.loss", "Loss"))
F("verdict_samples", ProtoField.uint32("daitn.verdict.samples", "Samples", base.DEC))
F("verdict_n",     ProtoField.uint8 ("daitn.verdict.n", "Classes", base.DEC))
F("verdict_per_class", ProtoField.float("daitn.verdict.per_class", "Per-class accuracy"))
F("query_n",       ProtoField.uint16("daitn.query.n", "Features", base.DEC))
F("query_feature", ProtoField.float ("daitn.query.feature", "Feature"))
F("result_label",  ProtoField.uint8 ("daitn.result.label", "Label", base.DEC))
F("result_confidence", ProtoField.float("daitn.result.confidence", "Confidence"))
F("result_service_ms", ProtoField.float("daitn.result.service_ms", "Service time (ms)"))
F("error_code",    ProtoField.uint16("daitn.error.code", "Error code", base.DEC))
F("error_len",     ProtoField.uint16("daitn.error.len", "Error text length", base.DEC))
F("error_text",    ProtoField.string("daitn.error.text", "Error text", base.UNICODE))
F("payload_data",  ProtoField.bytes ("daitn.payload.data", "Undecoded payload"))
F("trailing_data", ProtoField.bytes ("daitn.trailing_data", "Bytes after the message"))

-- auth trailer
F("auth",          ProtoField.none  ("daitn.auth", "Authentication trailer"))
F("auth_nonce",    ProtoField.uint64("daitn.auth.nonce", "Nonce", base.DEC))
F("auth_tag",      ProtoField.bytes ("daitn.auth.tag", "Tag (HMAC-SHA256)"))

local field_list = {}
for _, pf in pairs(f) do field_list[#field_list + 1] = pf end
daitn.fields = field_list

-- --------------------------------------------------------------- expert ----

local ef = {
    malformed   = ProtoExpert.new("daitn.malformed", "Malformed DA-ITN message",
                                  expert.group.MALFORMED, expert.severity.ERROR),
    truncated   = ProtoExpert.new("daitn.truncated", "Truncated DA-ITN message",
                                  expert.group.MALFORMED, expert.severity.ERROR),
    bad_tlv     = ProtoExpert.new("daitn.bad_tlv", "Malformed DA-ITN TLV",
                                  expert.group.MALFORMED, expert.severity.ERROR),
    bad_payload = ProtoExpert.new("daitn.bad_payload", "Malformed DA-ITN payload",
                                  expert.group.MALFORMED, expert.severity.ERROR),
    version     = ProtoExpert.new("daitn.bad_version", "Unsupported DA-ITN version",
                                  expert.group.PROTOCOL, expert.severity.WARN),
    unknown_type = ProtoExpert.new("daitn.unknown_type", "Unknown DA-ITN message type",
                                   expert.group.PROTOCOL, expert.severity.WARN),
    hops        = ProtoExpert.new("daitn.hop_limit_exceeded", "Hop count exceeds hop limit",
                                  expert.group.PROTOCOL, expert.severity.WARN),
    itin_ptr    = ProtoExpert.new("daitn.itin.ptr_out_of_range", "Itinerary pointer past the segment list",
                                  expert.group.PROTOCOL, expert.severity.WARN),
    ack_status  = ProtoExpert.new("daitn.ack.failed", "Model transfer not acknowledged",
                                  expert.group.RESPONSE_CODE, expert.severity.WARN),
    error_msg   = ProtoExpert.new("daitn.error.reported", "DA-ITN ERROR message",
                                  expert.group.RESPONSE_CODE, expert.severity.NOTE),
    resume      = ProtoExpert.new("daitn.resume_probe", "Resume probe (empty chunk)",
                                  expert.group.SEQUENCE, expert.severity.CHAT),
    -- Well-formed but not what receivers accept (nodes/wire.py refuses these):
    range       = ProtoExpert.new("daitn.out_of_range", "DA-ITN value out of range",
                                  expert.group.PROTOCOL, expert.severity.WARN),
    tlv_order   = ProtoExpert.new("daitn.tlv_order", "DA-ITN TLVs not once each in ascending order",
                                  expert.group.PROTOCOL, expert.severity.WARN),
    pad         = ProtoExpert.new("daitn.bad_padding", "DA-ITN padding not just 0-3 PADs at the end",
                                  expert.group.PROTOCOL, expert.severity.WARN),
    missing_tlv = ProtoExpert.new("daitn.missing_tlv", "DA-ITN message lacks a TLV its type always carries",
                                  expert.group.PROTOCOL, expert.severity.WARN),
    udp_extra   = ProtoExpert.new("daitn.trailing", "Bytes after the DA-ITN message in the datagram",
                                  expert.group.MALFORMED, expert.severity.ERROR),
}
local ef_list = {}
for _, e in pairs(ef) do ef_list[#ef_list + 1] = e end
daitn.experts = ef_list

-- ------------------------------------------------------------ prefs ------

daitn.prefs.udp_port = Pref.uint("UDP port", 7070, "UDP port of DA-ITN control messages")
daitn.prefs.tcp_port = Pref.uint("TCP port", 7000, "TCP port of DA-ITN node-to-node messages")

-- -------------------------------------------------------------- helpers ----

local function has_flag(v, mask)
    return math.floor(v / mask) % 2 == 1
end

local function fmt_acc(raw)
    return string.format("%.4f", raw / 10000)
end

-- Reader over [off, limit) of a tvb: every take() checks the bound first.
local function reader(tvb, off, limit)
    local r = { tvb = tvb, off = off, limit = limit }
    function r.left() return r.limit - r.off end
    function r.can(n) return r.off + n <= r.limit end
    function r.take(n)
        if r.off + n > r.limit then return nil end
        local range = r.tvb(r.off, n)
        r.off = r.off + n
        return range
    end
    return r
end

-- --------------------------------------------------------------- TLVs ------

-- Fixed value lengths; nil = variable (validated in the decoder).
local tlv_fixed_len = {
    [1] = 2, [2] = 8, [3] = 4, [4] = 2, [5] = 1, [7] = 1, [8] = 8,
    [17] = 32, [18] = 16, [19] = 4, [20] = 4, [21] = 1, [22] = 2,
}

-- Decode one TLV value (already bounds-checked: vr covers exactly `len` bytes).
-- Returns a short summary for the TLV item label.
local function decode_tlv(t, vr, len, st, info)
    if t == 1 or t == 4 or t == 22 then
        local raw = vr:uint()
        local pf = (t == 1 and f.target_accuracy) or (t == 4 and f.min_accuracy) or f.accuracy
        local it = st:add(pf, vr, raw / 10000)
        it:append_text(" (" .. raw .. "/10000)")
        if raw > 10000 then
            it:add_proto_expert_info(ef.range, "Accuracy " .. raw .. "/10000 is above 1.0")
        end
        return fmt_acc(raw)
    elseif t == 2 then
        local v = vr:uint64()
        local it = st:add(f.deadline, vr)
        local ms = tonumber(tostring(v))
        if ms and ms < 253402300800000 then
            local secs = math.floor(ms / 1000)
            local ok, s = pcall(os.date, "!%Y-%m-%d %H:%M:%S", secs)
            if ok and s then
                it:append_text(string.format(" (%s.%03d UTC)", s, ms % 1000))
            end
        end
        return tostring(v)
    elseif t == 3 then
        st:add(f.max_latency, vr)
        return vr:uint() .. " ms"
    elseif t == 5 then
        local it = st:add(f.privacy, vr)
        if not privacy_levels[vr:uint()] then
            it:add_proto_expert_info(ef.range, "Privacy level " .. vr:uint() .. " is not 0, 1 or 2")
        end
        return privacy_levels[vr:uint()] or tostring(vr:uint())
    elseif t == 6 then
        local labels = {}
        for i = 0, len - 1 do
            st:add(f.required_label, vr(i, 1))
            labels[#labels + 1] = tostring(vr(i, 1):uint())
        end
        return "[" .. table.concat(labels, ",") .. "]"
    elseif t == 7 then
        st:add(f.max_hops, vr)
        return tostring(vr:uint())
    elseif t == 8 then
        st:add(f.byte_budget, vr)
        return tostring(vr:uint64())
    elseif t == 9 then
        st:add(f.epochs, vr)
        return tostring(vr:uint())
    elseif t == 16 then
        if len < 4 or (len - 4) % 2 ~= 0 then
            st:add_proto_expert_info(ef.bad_tlv,
                "ITINERARY TLV length " .. len .. " is not 4 + 2*n")
            if vr then st:add(f.tlv_value, vr) end
            return "malformed"
        end
        local ptr = vr(0, 1):uint()
        st:add(f.itin_ptr, vr(0, 1))
        st:add(f.itin_lap, vr(1, 1))
        st:add(f.itin_max_laps, vr(2, 1))
        st:add(f.itin_reserved, vr(3, 1))
        local n = math.floor((len - 4) / 2)
        local names = {}
        for i = 0, n - 1 do
            local sr = vr(4 + 2 * i, 2)
            local id = sr:uint()
            local it = st:add(f.itin_segment, sr)
            it:append_text(" (" .. node_name(id) .. ")")
            if i == ptr then
                it:append_text(" <- current")
                st:add(f.itin_current, sr):set_generated()
                names[#names + 1] = "[" .. node_name(id) .. "]"
            else
                names[#names + 1] = node_name(id)
            end
        end
        if ptr > n then
            st:add_proto_expert_info(ef.itin_ptr,
                "Itinerary pointer " .. ptr .. " past " .. n .. " segments")
        end
        return string.format("ptr=%d lap=%d/%d %s", ptr, vr(1, 1):uint(), vr(2, 1):uint(),
                             table.concat(names, ","))
    elseif t == 17 then
        st:add(f.digest, vr)
        return tostring(vr:bytes()):sub(1, 16):lower() .. "..."
    elseif t == 18 then
        st:add(f.chunk_offset, vr(0, 8))
        st:add(f.chunk_total, vr(8, 8))
        info.chunk_offset = tostring(vr(0, 8):uint64())
        info.chunk_total = tostring(vr(8, 8):uint64())
        return "offset=" .. info.chunk_offset .. " total=" .. info.chunk_total
    elseif t == 19 then
        local it = st:add(f.dscp, vr(0, 1))
        if vr(0, 1):uint() > 63 then
            it:add_proto_expert_info(ef.range, "DSCP " .. vr(0, 1):uint() .. " is above 63")
        end
        st:add(f.transport_reserved, vr(1, 3))
        return "dscp=" .. vr(0, 1):uint()
    elseif t == 20 then
        st:add(f.client, vr(0, 2)):append_text(" (" .. node_name(vr(0, 2):uint()) .. ")")
        st:add(f.mpvu, vr(2, 2)):append_text(" (" .. node_name(vr(2, 2):uint()) .. ")")
        return "client=" .. node_name(vr(0, 2):uint()) .. " mpvu=" .. node_name(vr(2, 2):uint())
    elseif t == 21 then
        local it = st:add(f.end_reason, vr)
        if not end_reasons[vr:uint()] then
            it:add_proto_expert_info(ef.range, "End reason " .. vr:uint() .. " is not 1..5")
        end
        return end_reasons[vr:uint()] or tostring(vr:uint())
    end
    return nil
end

-- TLVs a message type always carries (docs/protocol.md, "Message types").
local required_tlvs = { [5] = { 17, 18 }, [7] = { 17, 18 }, [9] = { 17, 18, 21, 22 } }

local function dissect_tlvs(tvb, tree, start, stop, info)
    local off = start
    local avail = tvb:len()
    local last = 0
    local pad_seen = false
    info.tlvs = {}
    while off < stop do
        if off >= avail then
            tree:add_proto_expert_info(ef.truncated, "TLV area cut short by the capture")
            return
        end
        local t = tvb(off, 1):uint()
        if t == 0 then
            -- a run of one-byte PADs
            local p = off
            while p < stop and p < avail and tvb(p, 1):uint() == 0 do p = p + 1 end
            local it = tree:add(f.padding, tvb(off, p - off))
            if p - off > 3 then
                it:add_proto_expert_info(ef.pad, (p - off) .. " PADs: at most 3 fill to a word boundary")
            end
            pad_seen = true
            off = p
        else
            if pad_seen then
                tree:add_proto_expert_info(ef.pad, "TLV type " .. t .. " follows a PAD (PADs only end the TLV area)")
                pad_seen = false
            end
            local name = tlv_types[t] or "unknown"
            if off + 2 > stop or off + 2 > avail then
                local it = tree:add(f.tlv, tvb(off, math.min(stop, avail) - off))
                it:set_text(string.format("TLV %s (%d): no room for the length byte", name, t))
                it:add_proto_expert_info(ef.bad_tlv, "TLV header runs past hdr_len")
                return
            end
            local len = tvb(off + 1, 1):uint()
            local tlv_end = off + 2 + len
            if tlv_end > stop or tlv_end > avail then
                local it = tree:add(f.tlv, tvb(off, math.min(stop, avail) - off))
                it:set_text(string.format("TLV %s (%d), len %d: runs past the header", name, t, len))
                it:add(f.tlv_type, tvb(off, 1))
                it:add(f.tlv_len, tvb(off + 1, 1))
                it:add_proto_expert_info(ef.bad_tlv,
                    string.format("TLV %s value (%d bytes) runs past hdr_len", name, len))
                return
            end
            local st = tree:add(f.tlv, tvb(off, 2 + len))
            st:add(f.tlv_type, tvb(off, 1))
            st:add(f.tlv_len, tvb(off + 1, 1))
            if t <= last then
                st:add_proto_expert_info(ef.tlv_order, string.format(
                    "TLV %s is %s; TLVs appear once each, in ascending type order", name,
                    t == last and "repeated" or ("after " .. (tlv_types[last] or tostring(last)))))
            end
            if t > last then last = t end
            info.tlvs[t] = true
            local vr = len > 0 and tvb(off + 2, len) or nil
            local summary
            if not tlv_types[t] then
                if vr then st:add(f.tlv_value, vr) end
                st:add_proto_expert_info(ef.bad_tlv, "Unknown TLV type " .. t)
                summary = "unknown"
            elseif tlv_fixed_len[t] and tlv_fixed_len[t] ~= len then
                if vr then st:add(f.tlv_value, vr) end
                st:add_proto_expert_info(ef.bad_tlv, string.format(
                    "TLV %s has length %d, expected %d", name, len, tlv_fixed_len[t]))
                summary = "bad length"
            elseif len == 0 then
                summary = (t == 6) and "[]" or "empty"
                if t == 16 then summary = decode_tlv(t, nil, 0, st, info) end
            else
                summary = decode_tlv(t, vr, len, st, info)
            end
            st:set_text(string.format("TLV %s (%d), len %d%s", name, t, len,
                                      summary and (": " .. summary) or ""))
            off = tlv_end
        end
    end
end

-- ------------------------------------------------------------- payloads ----

-- Each decoder reads through a bounded reader `r`; it returns false (with an
-- explanation) when the payload is too short for its structure.
local function need(r, n, what, tree)
    if not r.can(n) then
        r.short = true
        tree:add_proto_expert_info(ef.bad_payload, string.format(
            "Payload too short for %s: need %d bytes, %d left", what, n, r.left()))
        return false
    end
    return true
end

local function dissect_string_field(r, tree, pf, n, what)
    if n == 0 then
        tree:add(pf, r.tvb(r.off, 0), "")
        return ""
    end
    if not need(r, n, what, tree) then return nil end
    local range = r.take(n)
    tree:add_packet_field(pf, range, ENC_UTF_8)
    return range:string(ENC_UTF_8)
end

local payload_decoders = {}

-- A KNOWLEDGE_REPORT float (capacity, load, service time, epsilon): finite and >= 0.
local function kr_float(r, pt, pf, what)
    local range = r.take(4)
    local v = range:float()
    local it = pt:add(pf, range)
    if v ~= v or v < 0 or v == math.huge then
        it:add_proto_expert_info(ef.range, what .. " = " .. tostring(v) .. ", must be finite and >= 0")
    end
    return v
end

payload_decoders[1] = function(r, pt, info)   -- KNOWLEDGE_REPORT (36 fixed bytes, then lists)
    if not need(r, 36, "KNOWLEDGE_REPORT", pt) then return end
    local rr = r.take(1)
    local rt = pt:add(f.kr_roles, rr)
    rt:add(f.kr_role_data, rr); rt:add(f.kr_role_mpvu, rr); rt:add(f.kr_role_client, rr)
    rt:add(f.kr_role_compute, rr); rt:add(f.kr_role_inference, rr)
    local nr = r.take(1)
    local n = nr:uint()
    pt:add(f.kr_n, nr)
    local mr = r.take(1)
    local m = mr:uint()
    pt:add(f.kr_n_models, mr)
    pt:add(f.kr_reserved, r.take(1))
    local sr = r.take(4)
    pt:add(f.kr_samples, sr)
    pt:add(f.kr_vsamples, r.take(4))
    local qr = r.take(4)
    pt:add(f.kr_report_seq, qr)
    local lr = r.take(4)
    pt:add(f.kr_queue_len, lr)
    kr_float(r, pt, f.kr_capacity, "capacity")
    local load = kr_float(r, pt, f.kr_load, "load")
    kr_float(r, pt, f.kr_service_ms, "service_ms")
    kr_float(r, pt, f.kr_noise_epsilon, "noise_epsilon")
    info.extra = string.format("samples=%d load=%.2f queue=%d report=%d", sr:uint(), load,
                               lr:uint(), qr:uint())
    if not need(r, 4 * n, "label histogram", pt) then return end
    for i = 0, n - 1 do
        pt:add(f.kr_hist, r.take(4)):prepend_text("[label " .. i .. "] ")
    end
    if not need(r, 4 * m, "hosted models", pt) then return end
    for i = 0, m - 1 do
        pt:add(f.kr_model, r.take(4)):prepend_text("[" .. i .. "] ")
    end
end

payload_decoders[2] = function(r, pt, info)   -- TRAIN_REQUEST
    if not need(r, 8, "TRAIN_REQUEST", pt) then return end
    local mr = r.take(8)
    pt:add(f.treq_model_bytes, mr)
    info.extra = "model_bytes=" .. tostring(mr:uint64())
end

payload_decoders[3] = function(r, pt, info)   -- FEASIBILITY
    if not need(r, 14, "FEASIBILITY", pt) then return end
    local fr = r.take(1)
    local fi = pt:add(f.feas_feasible, fr)
    if fr:uint() > 1 then
        fi:add_proto_expert_info(ef.range, "feasible = " .. fr:uint() .. ", must be 0 or 1")
    end
    pt:add(f.feas_est_seconds, r.take(4))
    pt:add(f.feas_est_bytes, r.take(8))
    local nr = r.take(1)
    pt:add(f.feas_n, nr)
    for i = 1, nr:uint() do
        if not need(r, 2, "reason length", pt) then return end
        local lr = r.take(2)
        pt:add(f.feas_reason_len, lr)
        if dissect_string_field(r, pt, f.feas_reason, lr:uint(), "reason text") == nil then
            return
        end
    end
    info.extra = fr:uint() ~= 0 and "feasible" or "infeasible"
end

payload_decoders[4] = function(r, pt, info)   -- ITINERARY
    if not need(r, 1, "ITINERARY", pt) then return end
    local lr = r.take(1)
    pt:add(f.itin_policy_len, lr)
    local s = dissect_string_field(r, pt, f.itin_policy, lr:uint(), "policy name")
    if s then info.extra = "policy=" .. s end
end

local function model_payload(r, pt, info)     -- MODEL_CHUNK, EVAL_REQUEST, TASK_RESULT
    local n = r.left()
    if n > 0 then
        pt:add(f.chunk_data, r.take(n))
    end
    info.extra = n .. " bytes"
    return n
end

payload_decoders[5] = function(r, pt, info)
    if model_payload(r, pt, info) == 0 then
        pt:add_proto_expert_info(ef.resume, "Empty MODEL_CHUNK: resume probe")
    end
end
payload_decoders[7] = model_payload
payload_decoders[9] = model_payload
payload_decoders[13] = model_payload  -- DATA_SHARD: raw samples, chunked like a model

payload_decoders[6] = function(r, pt, info)   -- ACK
    if not need(r, 9, "ACK", pt) then return end
    local nr = r.take(8)
    pt:add(f.ack_next_offset, nr)
    local sr = r.take(1)
    local si = pt:add(f.ack_status, sr)
    local st = sr:uint()
    if not ack_status[st] then
        si:add_proto_expert_info(ef.range, "ACK status " .. st .. " is not 0, 1 or 2")
    elseif st ~= 0 then
        pt:add_proto_expert_info(ef.ack_status, "ACK status: " .. (ack_status[st] or tostring(st)))
    end
    info.extra = "next=" .. tostring(nr:uint64()) .. " " .. (ack_status[st] or ("status=" .. st))
end

payload_decoders[8] = function(r, pt, info)   -- EVAL_VERDICT
    if not need(r, 13, "EVAL_VERDICT", pt) then return end
    local ar = r.take(4)
    pt:add(f.verdict_accuracy, ar)
    pt:add(f.verdict_loss, r.take(4))
    pt:add(f.verdict_samples, r.take(4))
    local nr = r.take(1)
    local n = nr:uint()
    pt:add(f.verdict_n, nr)
    if not need(r, 4 * n, "per-class accuracies", pt) then return end
    for i = 0, n - 1 do
        pt:add(f.verdict_per_class, r.take(4)):prepend_text("[class " .. i .. "] ")
    end
    info.extra = string.format("acc=%.4f", ar:float())
end

payload_decoders[10] = function(r, pt, info)  -- INFERENCE_QUERY
    if not need(r, 2, "INFERENCE_QUERY", pt) then return end
    local nr = r.take(2)
    local n = nr:uint()
    pt:add(f.query_n, nr)
    if not need(r, 4 * n, "input features", pt) then return end
    for i = 0, n - 1 do
        pt:add(f.query_feature, r.take(4)):prepend_text("[" .. i .. "] ")
    end
    info.extra = n .. " features"
end

payload_decoders[11] = function(r, pt, info)  -- INFERENCE_RESULT
    if not need(r, 9, "INFERENCE_RESULT", pt) then return end
    local lr = r.take(1)
    pt:add(f.result_label, lr)
    pt:add(f.result_confidence, r.take(4))
    pt:add(f.result_service_ms, r.take(4))
    info.extra = "label=" .. lr:uint()
end

payload_decoders[12] = function(r, pt, info)  -- ERROR
    if not need(r, 4, "ERROR", pt) then return end
    local cr = r.take(2)
    pt:add(f.error_code, cr)
    local lr = r.take(2)
    pt:add(f.error_len, lr)
    local s = dissect_string_field(r, pt, f.error_text, lr:uint(), "error text")
    pt:add_proto_expert_info(ef.error_msg, "ERROR " .. cr:uint() .. (s and (": " .. s) or ""))
    info.extra = "code=" .. cr:uint()
end

-- -------------------------------------------------------------- message ----

-- Total on-the-wire length announced by a header at `off` (36 bytes present).
local function announced_len(tvb, off)
    local hwords = tvb(off + 5, 1):uint()
    local hbytes = math.max(hwords * 4, HEADER_LEN)
    local total = hbytes + tvb(off + 32, 4):uint()
    if has_flag(tvb(off + 4, 1):uint(), FLAG_AUTH) then total = total + AUTH_LEN end
    return total
end

local function set_info(pinfo, text)
    -- First DA-ITN message of this frame replaces the column; later ones append.
    if tostring(pinfo.cols.protocol) == "DA-ITN" then
        pinfo.cols.info:append(" | " .. text)
    else
        pinfo.cols.protocol = "DA-ITN"
        pinfo.cols.info = text
    end
end

-- Dissect one message starting at offset 0 of `tvb` (a sub-tvb that may be
-- shorter than the message when the capture or datagram is truncated).
local function dissect_message(tvb, pinfo, tree)
    local avail = tvb:len()
    local ti = tree:add(daitn, tvb())

    if avail < HEADER_LEN then
        set_info(pinfo, "DA-ITN truncated header")
        ti:append_text(", truncated header")
        if avail >= 2 then ti:add(f.magic, tvb(0, 2)) end
        ti:add_proto_expert_info(ef.truncated, string.format(
            "Only %d bytes, the fixed header is %d", avail, HEADER_LEN))
        return
    end

    local magic = tvb(0, 2):uint()
    local version = tvb(2, 1):uint()
    local mtype = tvb(3, 1):uint()
    local flags = tvb(4, 1):uint()
    local hwords = tvb(5, 1):uint()
    local hop_count = tvb(6, 1):uint()
    local hop_limit = tvb(7, 1):uint()
    local task = tvb(8, 4):uint()
    local mver = tvb(16, 4):uint()
    local src = tvb(20, 2):uint()
    local dst = tvb(22, 2):uint()
    local plen = tvb(32, 4):uint()
    local tname = msg_types[mtype] or ("type " .. mtype)

    local ht = ti:add(f.header, tvb(0, HEADER_LEN))
    local mi = ht:add(f.magic, tvb(0, 2))
    if magic ~= MAGIC then
        mi:add_proto_expert_info(ef.malformed, string.format("Bad magic 0x%04x (expected 0x4441 \"DA\")", magic))
        set_info(pinfo, "DA-ITN bad magic")
        return
    end
    mi:append_text(' ("DA")')
    local vi = ht:add(f.version, tvb(2, 1))
    if version ~= VERSION then
        vi:add_proto_expert_info(ef.version, "DA-ITN version " .. version .. ", this dissector reads version " .. VERSION)
        set_info(pinfo, "DA-ITN v" .. version .. " (unsupported)")
        return
    end
    local tyi = ht:add(f.type, tvb(3, 1))
    if not msg_types[mtype] then
        tyi:add_proto_expert_info(ef.unknown_type, "Unknown message type " .. mtype)
    end
    local fi = ht:add(f.flags, tvb(4, 1))
    fi:add(f.flags_auth, tvb(4, 1))
    fi:add(f.flags_last, tvb(4, 1))
    fi:add(f.flags_reply, tvb(4, 1))
    local fl = {}
    if has_flag(flags, FLAG_AUTH) then fl[#fl + 1] = "AUTH" end
    if has_flag(flags, FLAG_LAST) then fl[#fl + 1] = "LAST" end
    if has_flag(flags, FLAG_REPLY) then fl[#fl + 1] = "REPLY" end
    if #fl > 0 then fi:append_text(" (" .. table.concat(fl, ", ") .. ")") end
    local hi = ht:add(f.hdr_len, tvb(5, 1))
    hi:append_text(" (" .. hwords * 4 .. " bytes)")
    ht:add(f.hop_count, tvb(6, 1))
    local hli = ht:add(f.hop_limit, tvb(7, 1))
    if hop_limit == 0 then hli:append_text(" (no limit)") end
    if hop_limit ~= 0 and hop_count > hop_limit then
        ht:add_proto_expert_info(ef.hops, string.format("hop_count %d > hop_limit %d", hop_count, hop_limit))
    end
    ht:add(f.task_id, tvb(8, 4))
    ht:add(f.model_id, tvb(12, 4))
    ht:add(f.model_version, tvb(16, 4))
    ht:add(f.src, tvb(20, 2)):append_text(" (" .. node_name(src) .. ")")
    ht:add(f.dst, tvb(22, 2)):append_text(" (" .. node_name(dst) .. ")")
    ht:add(f.seq, tvb(24, 4))
    ht:add(f.ack, tvb(28, 4))
    ht:add(f.length, tvb(32, 4))

    local info = {}
    local function finish_info()
        local s = string.format("%s task=%d %s->%s v=%d", tname, task, short_name(src),
                                short_name(dst), mver)
        if info.chunk_offset then s = s .. " off=" .. info.chunk_offset end
        if info.extra then s = s .. " " .. info.extra end
        if #fl > 0 then s = s .. " [" .. table.concat(fl, ",") .. "]" end
        set_info(pinfo, s)
        ti:append_text(", " .. s)
    end

    if hwords * 4 < HEADER_LEN then
        hi:add_proto_expert_info(ef.malformed, string.format(
            "hdr_len %d words (%d bytes) is below the 9-word fixed header", hwords, hwords * 4))
        finish_info()
        return
    end

    local hbytes = hwords * 4
    local total = hbytes + plen + (has_flag(flags, FLAG_AUTH) and AUTH_LEN or 0)
    ti:set_len(math.min(total, avail))

    -- TLVs
    if hbytes > HEADER_LEN then
        local tlen = math.min(hbytes, avail) - HEADER_LEN
        local tt = ti:add(f.tlvs, tvb(HEADER_LEN, tlen))
        dissect_tlvs(tvb, tt, HEADER_LEN, hbytes, info)
    end
    if avail < hbytes then
        ti:add_proto_expert_info(ef.truncated, string.format(
            "Message truncated inside the header: %d of %d header bytes", avail, hbytes))
        finish_info()
        return
    end
    local present = info.tlvs or {}
    local needed = required_tlvs[mtype] or {}
    for _, t in ipairs(needed) do
        if not present[t] then
            ti:add_proto_expert_info(ef.missing_tlv, string.format(
                "%s without the %s TLV (%d)", tname, tlv_types[t], t))
        end
    end

    -- payload
    local pend = hbytes + plen
    local pavail = math.min(pend, avail) - hbytes
    local pt = ti:add(f.payload, tvb(hbytes, pavail))
    pt:append_text(string.format(" (%d bytes)", plen))
    local dec = payload_decoders[mtype]
    local r = reader(tvb, hbytes, hbytes + pavail)
    if dec then
        local ok, err = pcall(dec, r, pt, info)
        if not ok then
            pt:add_proto_expert_info(ef.bad_payload, "Payload decode error: " .. tostring(err))
        elseif not r.short and r.left() > 0 and pavail == plen then
            local extra = r.left()
            pt:add(f.payload_data, r.take(extra))
            pt:add_proto_expert_info(ef.bad_payload, string.format(
                "%d trailing bytes after the %s payload", extra, tname))
        end
    elseif pavail > 0 then
        pt:add(f.payload_data, r.take(pavail))
    end
    if avail < pend then
        ti:add_proto_expert_info(ef.truncated, string.format(
            "Message truncated inside the payload: %d of %d payload bytes", pavail, plen))
        finish_info()
        return
    end

    -- auth trailer
    if has_flag(flags, FLAG_AUTH) then
        if avail < pend + AUTH_LEN then
            ti:add_proto_expert_info(ef.truncated, string.format(
                "AUTH flag set but only %d of %d trailer bytes", avail - pend, AUTH_LEN))
        else
            local at = ti:add(f.auth, tvb(pend, AUTH_LEN))
            at:add(f.auth_nonce, tvb(pend, 8))
            at:add(f.auth_tag, tvb(pend + 8, 32))
            at:append_text(" (nonce " .. tostring(tvb(pend, 8):uint64()) .. ")")
        end
    end
    finish_info()
end

local function safe_dissect_message(tvb, pinfo, tree)
    local ok, err = pcall(dissect_message, tvb, pinfo, tree)
    if not ok then
        local ti = tree:add(daitn, tvb())
        ti:add_proto_expert_info(ef.malformed, "Dissector error: " .. tostring(err))
    end
end

-- ------------------------------------------------------------ transport ----

-- UDP: a datagram holds exactly one message; a short one is flagged
-- malformed, and so are bytes after it.
local function dissect_udp(tvb, pinfo, tree)
    local len = tvb:len()
    local msg_len = len
    if len >= HEADER_LEN and tvb(0, 2):uint() == MAGIC and tvb(2, 1):uint() == VERSION then
        msg_len = math.min(announced_len(tvb, 0), len)
    end
    safe_dissect_message(tvb(0, msg_len):tvb(), pinfo, tree)
    if msg_len < len then
        local ti = tree:add(daitn, tvb(msg_len, len - msg_len))
        ti:set_text(string.format("DA-ITN: %d bytes after the message", len - msg_len))
        ti:add(f.trailing_data, tvb(msg_len, len - msg_len))
        ti:add_proto_expert_info(ef.udp_extra, string.format(
            "%d bytes after the %d-byte message: a datagram carries one message",
            len - msg_len, msg_len))
    end
    return len
end

-- TCP: messages back to back in the stream.
local function tcp_pdu_len(tvb, pinfo, off)
    if tvb(off, 2):uint() ~= MAGIC or tvb(off + 2, 1):uint() ~= VERSION then
        -- Out of sync (or another version): hand the rest of the segment over as one
        -- malformed unit instead of waiting for a length we cannot trust.
        return tvb:len() - off
    end
    return announced_len(tvb, off)
end

local function tcp_pdu(tvb, pinfo, tree)
    safe_dissect_message(tvb, pinfo, tree)
    return tvb:len()
end

local function dissect_tcp(tvb, pinfo, tree)
    dissect_tcp_pdus(tvb, tree, HEADER_LEN, tcp_pdu_len, tcp_pdu, true)
    return tvb:len()
end

-- pinfo.port_type is PT_TCP (2) for TCP and PT_UDP (3) for UDP (epan/address.h).
local PT_TCP = 2

function daitn.dissector(tvb, pinfo, tree)
    if tonumber(pinfo.port_type) == PT_TCP then
        return dissect_tcp(tvb, pinfo, tree)
    end
    return dissect_udp(tvb, pinfo, tree)
end

local registered = { udp = nil, tcp = nil }
local function register_ports()
    local udp_table = DissectorTable.get("udp.port")
    local tcp_table = DissectorTable.get("tcp.port")
    if registered.udp then udp_table:remove(registered.udp, daitn) end
    if registered.tcp then tcp_table:remove(registered.tcp, daitn) end
    registered.udp = daitn.prefs.udp_port
    registered.tcp = daitn.prefs.tcp_port
    udp_table:add(registered.udp, daitn)
    tcp_table:add(registered.tcp, daitn)
end

function daitn.prefs_changed()
    if registered.udp ~= daitn.prefs.udp_port or registered.tcp ~= daitn.prefs.tcp_port then
        register_ports()
    end
end

register_ports()
