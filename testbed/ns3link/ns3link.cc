// The ns-3 side of testbed.ns3link: the links and the real-time watch, compiled once
// at set-up (build.py) against the ns3 wheel's headers and libraries, called from
// sim.py through the small C API at the bottom.
//
// One LinkEnd per tap: an FdNetDevice on the tap's file descriptor, bridged to a
// SimpleNetDevice; the two SimpleNetDevices of a link share a SimpleChannel.
// SimpleNetDevice serialises frames at its DataRate from its own drop-tail queue
// (each direction on its own: full duplex), the channel adds the one-way delay and
// the receiving SimpleNetDevice's RateErrorModel drops frames. The whole Ethernet
// frame crosses the link (header included), so the rate counts what the kernel's
// shapers (HTB, tbf) count. Point-to-point devices would be the textbook choice
// but cannot forward frames with foreign MAC addresses (no SendFrom), and CSMA is
// half-duplex.
//
// WiFi segments (ns3link_add_wifi / ns3link_add_station): one access point and its
// stations on one YansWifiChannel, each node with a mobility model. The AP's tap is
// an Open vSwitch port; each station's tap is a Mininet host's hN-eth0. Frames are
// bridged by hand, as for links: tap -> FdNetDevice -> (promiscuous handler) ->
// WifiNetDevice::SendFrom/Send, and back. The AP (ApWifiMac) can send frames with
// foreign source addresses (from-DS, three-address frames), so any host behind the
// switch reaches the stations. A station (StaWifiMac, plain infrastructure mode)
// can send only with its own address as source: so each station device is given
// the MAC of its host's interface, and frames from the host carry exactly that
// address (others are counted as foreign_src drops, never sent). Station-to-station
// frames are relayed by the AP inside the BSS, as in a real WLAN.
//
// Control: while running, ns3link_set_link / ns3link_wifi_move / ns3link_wifi_velocity
// may be called from another thread (sim.py's command reader). They only schedule
// the change into the simulator (Simulator::ScheduleWithContext, thread-safe in the
// real-time simulator); the change is applied by the simulator thread, which then
// writes an "applied" status line with the command's id.

#include "ns3/data-rate.h"
#include "ns3/drop-tail-queue.h"
#include "ns3/error-model.h"
#include "ns3/ethernet-header.h"
#include "ns3/fd-net-device.h"
#include "ns3/global-value.h"
#include "ns3/mac48-address.h"
#include "ns3/node.h"
#include "ns3/packet.h"
#include "ns3/pcap-file-wrapper.h"
#include "ns3/queue-size.h"
#include "ns3/random-variable-stream.h"
#include "ns3/realtime-simulator-impl.h"
#include "ns3/rng-seed-manager.h"
#include "ns3/simple-channel.h"
#include "ns3/simple-net-device.h"
#include "ns3/simulator.h"
#include "ns3/string.h"
#include "ns3/trace-helper.h"

#include "ns3/ap-wifi-mac.h"
#include "ns3/boolean.h"
#include "ns3/constant-position-mobility-model.h"
#include "ns3/constant-velocity-mobility-model.h"
#include "ns3/double.h"
#include "ns3/frame-exchange-manager.h"
#include "ns3/propagation-delay-model.h"
#include "ns3/propagation-loss-model.h"
#include "ns3/ssid.h"
#include "ns3/sta-wifi-mac.h"
#include "ns3/pointer.h"
#include "ns3/uinteger.h"
#include "ns3/wifi-helper.h"
#include "ns3/wifi-mac-header.h"
#include "ns3/wifi-mac-helper.h"
#include "ns3/wifi-net-device.h"
#include "ns3/wifi-phy.h"
#include "ns3/wifi-psdu.h"
#include "ns3/wifi-tx-vector.h"
#include "ns3/yans-wifi-channel.h"
#include "ns3/yans-wifi-helper.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace ns3;

namespace
{

// Frames and drops of one direction of a link (written by the simulator thread only).
struct Direction
{
    uint64_t frames_in = 0;    // frames read from the sending tap
    uint64_t bytes_in = 0;     // their bytes (Ethernet header included)
    uint64_t queue_drops = 0;  // tail-dropped by the sender's queue (link saturated)
    uint64_t loss_drops = 0;   // dropped by the error model
    uint64_t frames_out = 0;   // frames written into the receiving tap
    uint64_t bytes_out = 0;    // their bytes (Ethernet header included)
    uint64_t write_errors = 0; // write() into the receiving tap failed
};

// Lateness of events against the wall clock, in 10 us bins up to 1 s.
struct LagHistogram
{
    static constexpr int64_t kBinNs = 10000;
    static constexpr size_t kBins = 100000;
    std::vector<uint32_t> bins = std::vector<uint32_t>(kBins + 1, 0);
    uint64_t n = 0;
    double sumNs = 0;
    int64_t maxNs = 0;

    void Add(int64_t ns)
    {
        ns = ns < 0 ? 0 : ns;
        size_t b = static_cast<size_t>(ns / kBinNs);
        bins[b < kBins ? b : kBins]++;
        n++;
        sumNs += static_cast<double>(ns);
        maxNs = ns > maxNs ? ns : maxNs;
    }

    double QuantileMs(double q) const
    {
        if (n == 0)
        {
            return 0;
        }
        uint64_t want = static_cast<uint64_t>(q * static_cast<double>(n - 1)) + 1;
        uint64_t seen = 0;
        for (size_t b = 0; b <= kBins; b++)
        {
            seen += bins[b];
            if (seen >= want)
            {
                // the bin's upper edge, but never more than the largest lag seen
                double edge = static_cast<double>((b + 1) * kBinNs) / 1e6;
                double max = static_cast<double>(maxNs) / 1e6;
                return edge < max ? edge : max;
            }
        }
        return static_cast<double>(maxNs) / 1e6;
    }

    std::string Json() const
    {
        char buf[256];
        std::snprintf(buf,
                      sizeof buf,
                      "{\"n\": %llu, \"mean_ms\": %.4f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, "
                      "\"p999_ms\": %.3f, \"max_ms\": %.4f}",
                      static_cast<unsigned long long>(n),
                      n ? sumNs / static_cast<double>(n) / 1e6 : 0.0,
                      QuantileMs(0.5),
                      QuantileMs(0.99),
                      QuantileMs(0.999),
                      static_cast<double>(maxNs) / 1e6);
        return buf;
    }
};

// One tap of a link: frames read from the tap go onto the wire, frames off the wire go into it.
struct LinkEnd
{
    Ptr<Node> node;
    Ptr<FdNetDevice> tap;
    Ptr<SimpleNetDevice> wire;
    Ptr<PcapFileWrapper> pcap; // closed by ns3link_destroy: nothing else would flush it
    Direction* out = nullptr; // this end -> the other end
    Direction* in = nullptr;  // the other end -> this end
};

struct Link
{
    std::string name;
    LinkEnd a, b;
    Direction ab, ba;
    Ptr<SimpleChannel> channel; // its Delay changes at run time (ns3link_set_link)
};

std::atomic<int> g_signal{0};
int64_t g_epochNs = 0;       // Unix time of simulation time 0: pcaps carry Unix time
LagHistogram g_tickLag;      // the periodic watch event
LagHistogram g_packetLag;    // every frame written into a tap, against its ideal time
int64_t g_intervalMaxNs = 0; // worst lag since the last status line
Ptr<RealtimeSimulatorImpl> g_rt;
std::vector<Link*> g_links;

int64_t
UnixNs()
{
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// How late the running event is: wall clock minus its scheduled (simulation) time.
int64_t
LagNs()
{
    return g_rt->RealtimeNow().GetNanoSeconds() - Simulator::Now().GetNanoSeconds();
}

void
NoteLag(LagHistogram& h, int64_t lag)
{
    h.Add(lag);
    g_intervalMaxNs = lag > g_intervalMaxNs ? lag : g_intervalMaxNs;
}

void
PcapSink(Ptr<PcapFileWrapper> file, Ptr<const Packet> p)
{
    file->Write(NanoSeconds(g_epochNs + Simulator::Now().GetNanoSeconds()), p);
}

// Tap -> wire: put the Ethernet header back and queue the whole frame on the wire.
void
FromTap(LinkEnd* end,
        Ptr<NetDevice>,
        Ptr<const Packet> packet,
        uint16_t protocol,
        const Address& src,
        const Address& dst,
        NetDevice::PacketType)
{
    Ptr<Packet> frame = packet->Copy();
    EthernetHeader eth(false);
    eth.SetSource(Mac48Address::ConvertFrom(src));
    eth.SetDestination(Mac48Address::ConvertFrom(dst));
    eth.SetLengthType(protocol);
    frame->AddHeader(eth);
    end->out->frames_in++;
    end->out->bytes_in += frame->GetSize();
    if (!end->wire->SendFrom(frame, src, dst, protocol))
    {
        end->out->queue_drops++;
    }
}

// Wire -> tap: strip the header FromTap added and write the frame into the tap as it was sent.
void
FromWire(LinkEnd* end,
         Ptr<NetDevice>,
         Ptr<const Packet> packet,
         uint16_t,
         const Address&,
         const Address&,
         NetDevice::PacketType)
{
    NoteLag(g_packetLag, LagNs());
    Ptr<Packet> frame = packet->Copy();
    EthernetHeader eth(false);
    frame->RemoveHeader(eth);
    uint32_t bytes = packet->GetSize();
    if (end->tap->SendFrom(frame, eth.GetSource(), eth.GetDestination(), eth.GetLengthType()))
    {
        end->in->frames_out++;
        end->in->bytes_out += bytes;
    }
    else
    {
        end->in->write_errors++;
    }
}

void
CountLoss(Direction* d, Ptr<const Packet>)
{
    d->loss_drops++;
}

void
MakeEnd(LinkEnd& e,
        int fd,
        uint16_t mtu,
        Ptr<SimpleChannel> channel,
        double rateBps,
        uint32_t queuePackets,
        double lossRate,
        const std::string& pcapPath)
{
    e.node = CreateObject<Node>();
    e.tap = CreateObject<FdNetDevice>();
    e.tap->SetAddress(Mac48Address::Allocate());
    e.tap->SetFileDescriptor(fd);
    e.tap->SetMtu(mtu);
    e.node->AddDevice(e.tap);

    e.wire = CreateObject<SimpleNetDevice>();
    e.wire->SetAddress(Mac48Address::Allocate());
    e.wire->SetMtu(mtu + 64); // the frame travels with its Ethernet header (and maybe VLAN tags)
    if (rateBps > 0)
    {
        e.wire->SetAttribute("DataRate", DataRateValue(DataRate(static_cast<uint64_t>(rateBps))));
    }
    Ptr<DropTailQueue<Packet>> q = CreateObject<DropTailQueue<Packet>>();
    q->SetMaxSize(QueueSize(QueueSizeUnit::PACKETS, queuePackets));
    e.wire->SetQueue(q);
    if (lossRate > 0)
    {
        Ptr<RateErrorModel> em = CreateObject<RateErrorModel>();
        em->SetUnit(RateErrorModel::ERROR_UNIT_PACKET);
        em->SetRate(lossRate);
        em->SetRandomVariable(CreateObject<UniformRandomVariable>());
        e.wire->SetReceiveErrorModel(em);
    }
    e.node->AddDevice(e.wire);
    e.wire->SetChannel(channel);

    if (!pcapPath.empty())
    {
        PcapHelper helper;
        e.pcap = helper.CreateFile(pcapPath, std::ios::out, PcapHelper::DLT_EN10MB, 65535);
        // Both ways at the tap: frames the host sent (before the link) and frames
        // delivered to it (after the link's delay and loss).
        e.tap->TraceConnectWithoutContext("PromiscSniffer", MakeBoundCallback(&PcapSink, e.pcap));
    }
}

std::string
DirectionJson(const Direction& d)
{
    char buf[256];
    std::snprintf(buf,
                  sizeof buf,
                  "{\"frames_in\": %llu, \"bytes_in\": %llu, \"queue_drops\": %llu, "
                  "\"loss_drops\": %llu, \"frames_out\": %llu, \"bytes_out\": %llu, \"write_errors\": %llu}",
                  static_cast<unsigned long long>(d.frames_in),
                  static_cast<unsigned long long>(d.bytes_in),
                  static_cast<unsigned long long>(d.queue_drops),
                  static_cast<unsigned long long>(d.loss_drops),
                  static_cast<unsigned long long>(d.frames_out),
                  static_cast<unsigned long long>(d.bytes_out),
                  static_cast<unsigned long long>(d.write_errors));
    return buf;
}

// --- WiFi segments -----------------------------------------------------------------

void StatusEvent(const std::string& event, const std::string& fields); // after the watch

// One station: a Mininet host's tap, bridged to a WifiNetDevice whose MAC is the host's.
struct Station
{
    std::string host;
    Mac48Address mac;
    Ptr<Node> node;
    Ptr<FdNetDevice> tap;
    Ptr<WifiNetDevice> dev;
    Ptr<ConstantVelocityMobilityModel> mob;
    Ptr<PcapFileWrapper> pcap;
    Direction up;   // host -> station tap -> radio -> AP -> AP tap
    Direction down; // AP tap -> AP -> radio -> station -> host
    uint64_t foreignSrc = 0;   // frames from the host with another source MAC: not sent
    uint64_t macTxDrops = 0;   // dropped by the station's MAC (not associated, queue full)
    uint64_t upDataTx = 0;     // data frame transmissions (retries included) station -> AP
    uint64_t downDataTx = 0;   // and AP -> station
    double upRateBps = 0;      // PHY rate of the last data frame station -> AP
    double downRateBps = 0;    // and AP -> station
    bool associated = false;
    uint64_t assocs = 0, deassocs = 0;
    EventId arrive;            // end of a move (ns3link_wifi_move with a speed)
};

// One access point, its channel and its stations.
struct Segment
{
    std::string name;
    std::string standard;
    Ptr<Node> apNode;
    Ptr<FdNetDevice> apTap;
    Ptr<WifiNetDevice> apDev;
    Ptr<MobilityModel> apMob;
    Ptr<PcapFileWrapper> apPcap;
    Ptr<YansWifiChannel> channel;
    Ptr<PropagationLossModel> loss;
    WifiHelper wifi;
    YansWifiPhyHelper phy;
    Ssid ssid;
    double txPowerDbm = 16.0206;
    double noiseFigureDb = 7;  // the receiver's (ns-3's default)
    double noiseDbm = -94;     // thermal noise in the channel width + the noise figure
    double minRssiDbm = -82;   // preamble detection: weaker frames are not received at all
    double minSnrDb = 4;
    std::vector<std::pair<double, double>> modes; // (SNR dB needed for BER 1e-6, data rate b/s), rising
    std::vector<Station*> stations;
    std::map<Mac48Address, Station*> byMac;
    uint64_t apBroadcastIn = 0;  // group frames from the AP tap into the BSS
    uint64_t apUnknownDst = 0;   // unicast frames from the AP tap to no station of the BSS
    uint64_t apMacTxDrops = 0;
};

std::vector<Segment*> g_wifi;

// A station's link as the channel model gives it now: rx power, SNR and the fastest
// mode the Ideal rate manager would pick at that SNR (0 when out of reach).
struct LinkModel
{
    double distance, rxDbm, snrDb, rateBps;
};

LinkModel
ModelOf(const Segment* s, const Station* st)
{
    LinkModel m;
    m.distance = s->apMob->GetDistanceFrom(st->mob);
    m.rxDbm = s->loss->CalcRxPower(s->txPowerDbm, s->apMob, st->mob);
    m.snrDb = m.rxDbm - s->noiseDbm;
    m.rateBps = 0;
    if (m.rxDbm >= s->minRssiDbm && m.snrDb >= s->minSnrDb)
    {
        for (const auto& [snr, rate] : s->modes)
        {
            if (m.snrDb >= snr && rate > m.rateBps)
            {
                m.rateBps = rate;
            }
        }
    }
    return m;
}

// Host -> station tap -> radio. Only the host's own MAC may be the source.
void
FromStationTap(Station* st,
               Ptr<NetDevice>,
               Ptr<const Packet> packet,
               uint16_t protocol,
               const Address& src,
               const Address& dst,
               NetDevice::PacketType)
{
    st->up.frames_in++;
    st->up.bytes_in += packet->GetSize() + 14;
    if (Mac48Address::ConvertFrom(src) != st->mac)
    {
        st->foreignSrc++;
        return;
    }
    if (!st->dev->Send(packet->Copy(), dst, protocol))
    {
        st->up.queue_drops++;
    }
}

// Radio -> station -> tap (frames the AP sent to this station, or to all).
void
FromStationRadio(Station* st,
                 Ptr<NetDevice>,
                 Ptr<const Packet> packet,
                 uint16_t protocol,
                 const Address& src,
                 const Address& dst,
                 NetDevice::PacketType)
{
    if (Mac48Address::ConvertFrom(src) == st->mac)
    {
        return; // its own group frame, relayed back by the AP
    }
    NoteLag(g_packetLag, LagNs());
    if (st->tap->SendFrom(packet->Copy(), src, dst, protocol))
    {
        st->down.frames_out++;
        st->down.bytes_out += packet->GetSize() + 14;
    }
    else
    {
        st->down.write_errors++;
    }
}

// Switch -> AP tap -> radio: to the station of that MAC, or to all for group frames.
void
FromApTap(Segment* s,
          Ptr<NetDevice>,
          Ptr<const Packet> packet,
          uint16_t protocol,
          const Address& src,
          const Address& dst,
          NetDevice::PacketType)
{
    Mac48Address to = Mac48Address::ConvertFrom(dst);
    if (to.IsGroup())
    {
        s->apBroadcastIn++;
    }
    else
    {
        auto it = s->byMac.find(to);
        if (it == s->byMac.end())
        {
            s->apUnknownDst++;
            return;
        }
        it->second->down.frames_in++;
        it->second->down.bytes_in += packet->GetSize() + 14;
    }
    s->apDev->SendFrom(packet->Copy(), src, dst, protocol);
}

// Radio -> AP -> tap: what the stations send out of the BSS (and their group frames).
void
FromApRadio(Segment* s,
            Ptr<NetDevice>,
            Ptr<const Packet> packet,
            uint16_t protocol,
            const Address& src,
            const Address& dst,
            NetDevice::PacketType)
{
    NoteLag(g_packetLag, LagNs());
    auto it = s->byMac.find(Mac48Address::ConvertFrom(src));
    bool ok = s->apTap->SendFrom(packet->Copy(), src, dst, protocol);
    if (it != s->byMac.end())
    {
        (ok ? it->second->up.frames_out : it->second->up.write_errors)++;
        it->second->up.bytes_out += ok ? packet->GetSize() + 14 : 0;
    }
}

void
ApTxPsdu(Segment* s, WifiConstPsduMap psdus, WifiTxVector tx, double)
{
    for (const auto& [id, psdu] : psdus)
    {
        if (psdu->GetNMpdus() == 0 || !psdu->GetHeader(0).IsData())
        {
            continue;
        }
        auto it = s->byMac.find(psdu->GetAddr1());
        if (it != s->byMac.end())
        {
            it->second->downRateBps = static_cast<double>(tx.GetMode().GetDataRate(tx));
            it->second->downDataTx++;
        }
    }
}

void
StationTxPsdu(Station* st, WifiConstPsduMap psdus, WifiTxVector tx, double)
{
    for (const auto& [id, psdu] : psdus)
    {
        if (psdu->GetNMpdus() > 0 && psdu->GetHeader(0).IsData())
        {
            st->upRateBps = static_cast<double>(tx.GetMode().GetDataRate(tx));
            st->upDataTx++;
        }
    }
}

void
CountDrop(uint64_t* n, Ptr<const Packet>)
{
    (*n)++;
}

std::string
Vec(const Vector& v)
{
    char buf[96];
    std::snprintf(buf, sizeof buf, "[%.3f, %.3f, %.3f]", v.x, v.y, v.z);
    return buf;
}

std::string
StationJson(const Segment* s, const Station* st)
{
    LinkModel m = ModelOf(s, st);
    char buf[1024];
    std::snprintf(buf,
                  sizeof buf,
                  "{\"position\": %s, \"velocity\": %s, \"distance_m\": %.3f, \"rx_dbm\": %.2f, "
                  "\"snr_db\": %.2f, \"model_rate_mbps\": %.1f, \"associated\": %s, "
                  "\"assocs\": %llu, \"deassocs\": %llu, \"up_rate_mbps\": %.1f, "
                  "\"down_rate_mbps\": %.1f, \"up_data_tx\": %llu, \"down_data_tx\": %llu, "
                  "\"foreign_src\": %llu, \"mac_tx_drops\": %llu, ",
                  Vec(st->mob->GetPosition()).c_str(),
                  Vec(st->mob->GetVelocity()).c_str(),
                  m.distance,
                  m.rxDbm,
                  m.snrDb,
                  m.rateBps / 1e6,
                  st->associated ? "true" : "false",
                  static_cast<unsigned long long>(st->assocs),
                  static_cast<unsigned long long>(st->deassocs),
                  st->upRateBps / 1e6,
                  st->downRateBps / 1e6,
                  static_cast<unsigned long long>(st->upDataTx),
                  static_cast<unsigned long long>(st->downDataTx),
                  static_cast<unsigned long long>(st->foreignSrc),
                  static_cast<unsigned long long>(st->macTxDrops));
    return std::string(buf) + "\"up\": " + DirectionJson(st->up) +
           ", \"down\": " + DirectionJson(st->down) + "}";
}

std::string
WifiJson()
{
    std::string out;
    for (const Segment* s : g_wifi)
    {
        std::string stations;
        for (const Station* st : s->stations)
        {
            stations += (stations.empty() ? "\"" : ", \"") + st->host + "\": " + StationJson(s, st);
        }
        char buf[256];
        std::snprintf(buf,
                      sizeof buf,
                      "{\"standard\": \"%s\", \"ap_position\": %s, \"ap_broadcast_in\": %llu, "
                      "\"ap_unknown_dst\": %llu, \"ap_mac_tx_drops\": %llu, ",
                      s->standard.c_str(),
                      Vec(s->apMob->GetPosition()).c_str(),
                      static_cast<unsigned long long>(s->apBroadcastIn),
                      static_cast<unsigned long long>(s->apUnknownDst),
                      static_cast<unsigned long long>(s->apMacTxDrops));
        out += (out.empty() ? "\"" : ", \"") + s->name + "\": " + buf + "\"stations\": {" +
               stations + "}}";
    }
    return out;
}

void
OnAssoc(Station* st, Mac48Address bssid)
{
    st->associated = true;
    st->assocs++;
    StatusEvent("assoc", "\"station\": \"" + st->host + "\"");
}

void
OnDeassoc(Station* st, Mac48Address bssid)
{
    st->associated = false;
    st->deassocs++;
    StatusEvent("deassoc", "\"station\": \"" + st->host + "\"");
}

void
ConnectPcap(Ptr<FdNetDevice> tap, Ptr<PcapFileWrapper>& file, const std::string& path)
{
    if (!path.empty())
    {
        PcapHelper helper;
        file = helper.CreateFile(path, std::ios::out, PcapHelper::DLT_EN10MB, 65535);
        tap->TraceConnectWithoutContext("PromiscSniffer", MakeBoundCallback(&PcapSink, file));
    }
}

// Give a WiFi device the address ``addr``: WifiNetDevice::SetAddress only changes the
// MAC's own field; each link's FrameExchangeManager keeps the address (and, at an AP,
// the BSSID) it was installed with, and would ACK and filter by the old one.
void
SetWifiAddress(Ptr<WifiNetDevice> dev, Mac48Address addr, bool ap)
{
    dev->SetAddress(addr);
    Ptr<WifiMac> mac = dev->GetMac();
    for (uint8_t link : mac->GetLinkIds())
    {
        mac->GetFrameExchangeManager(link)->SetAddress(addr);
        if (ap)
        {
            mac->SetBssid(addr, link);
        }
    }
}

Ptr<FdNetDevice>
MakeTap(Ptr<Node> node, int fd, uint16_t mtu)
{
    Ptr<FdNetDevice> tap = CreateObject<FdNetDevice>();
    tap->SetAddress(Mac48Address::Allocate());
    tap->SetFileDescriptor(fd);
    tap->SetMtu(mtu);
    node->AddDevice(tap);
    return tap;
}

// --- changes while running (scheduled into the simulator by the C API) -------------

void
Applied(uint64_t id, const std::string& what)
{
    StatusEvent("applied", "\"id\": " + std::to_string(id) + ", " + what);
}

void
DoSetLink(Link* l, double rateBps, double delayNs, double lossRate, uint64_t id)
{
    for (LinkEnd* e : {&l->a, &l->b})
    {
        if (rateBps >= 0)
        {
            e->wire->SetAttribute("DataRate", DataRateValue(DataRate(static_cast<uint64_t>(rateBps))));
        }
        if (lossRate >= 0)
        {
            PointerValue pv;
            Ptr<RateErrorModel> em;
            e->wire->GetAttribute("ReceiveErrorModel", pv);
            em = pv.Get<RateErrorModel>();
            if (!em && lossRate > 0)
            {
                em = CreateObject<RateErrorModel>();
                em->SetUnit(RateErrorModel::ERROR_UNIT_PACKET);
                em->SetRandomVariable(CreateObject<UniformRandomVariable>());
                e->wire->SetReceiveErrorModel(em);
            }
            if (em)
            {
                em->SetRate(lossRate);
            }
        }
    }
    if (delayNs >= 0)
    {
        l->channel->SetAttribute("Delay", TimeValue(NanoSeconds(static_cast<int64_t>(delayNs))));
    }
    char buf[256];
    std::snprintf(buf,
                  sizeof buf,
                  "\"command\": \"set_link\", \"link\": \"%s\", \"rate_bps\": %.0f, \"delay_ns\": %.0f, "
                  "\"loss_rate\": %.6f",
                  l->name.c_str(),
                  rateBps,
                  delayNs,
                  lossRate);
    Applied(id, buf);
}

void
Arrive(Station* st, Vector to)
{
    st->mob->SetVelocity(Vector(0, 0, 0));
    st->mob->SetPosition(to);
    StatusEvent("arrived", "\"station\": \"" + st->host + "\", \"position\": " + Vec(to));
}

void
DoMove(Station* st, Vector to, double speed, uint64_t id)
{
    st->arrive.Cancel();
    Vector from = st->mob->GetPosition();
    double dist = CalculateDistance(from, to);
    if (speed <= 0 || dist == 0)
    {
        st->mob->SetVelocity(Vector(0, 0, 0));
        st->mob->SetPosition(to);
    }
    else
    {
        Vector v((to.x - from.x) / dist * speed, (to.y - from.y) / dist * speed, (to.z - from.z) / dist * speed);
        st->mob->SetVelocity(v);
        st->arrive = Simulator::Schedule(Seconds(dist / speed), &Arrive, st, to);
    }
    char buf[256];
    std::snprintf(buf, sizeof buf, ", \"speed\": %.3f, \"eta_s\": %.3f", speed,
                  speed > 0 ? dist / speed : 0.0);
    Applied(id, "\"command\": \"move\", \"station\": \"" + st->host + "\", \"from\": " + Vec(from) +
                    ", \"to\": " + Vec(to) + buf);
}

void
DoVelocity(Station* st, Vector v, uint64_t id)
{
    st->arrive.Cancel();
    st->mob->SetVelocity(v);
    Applied(id, "\"command\": \"velocity\", \"station\": \"" + st->host + "\", \"velocity\": " + Vec(v) +
                    ", \"position\": " + Vec(st->mob->GetPosition()));
}

void
DoReject(uint64_t id, std::string why)
{
    std::string esc;
    for (char c : why)
    {
        esc += (c == '"' || c == '\\') ? '\'' : c;
    }
    StatusEvent("rejected", "\"id\": " + std::to_string(id) + ", \"reason\": \"" + esc + "\"");
}

Station*
FindStation(int seg, int sta)
{
    if (seg < 0 || static_cast<size_t>(seg) >= g_wifi.size() || sta < 0 ||
        static_cast<size_t>(sta) >= g_wifi[seg]->stations.size())
    {
        return nullptr;
    }
    return g_wifi[seg]->stations[sta];
}

// Commands arrive on another thread; they may schedule only while the simulator runs.
std::mutex g_cmdMutex;
bool g_accepting = false;

template <typename... Ts>
bool
ScheduleCommand(Ts&&... args)
{
    std::lock_guard<std::mutex> lock(g_cmdMutex);
    if (!g_accepting)
    {
        return false;
    }
    Simulator::ScheduleWithContext(Simulator::NO_CONTEXT, Seconds(0), std::forward<Ts>(args)...);
    return true;
}

// The watch: samples the lag, writes status lines, stops on a signal or on too much lag.
struct Watch
{
    FILE* status = nullptr;
    Time sample;
    int64_t reportEveryNs = 1000000000;
    int64_t maxLagNs = 0; // 0: no limit
    int64_t nextReportNs = 0;
    std::string stopReason = "ended";
    std::string stopDetail;

    void Line(const char* event, const std::string& extra)
    {
        std::string links;
        for (Link* l : g_links)
        {
            links += (links.empty() ? "" : ", ") + std::string("\"") + l->name +
                     "\": {\"a_to_b\": " + DirectionJson(l->ab) +
                     ", \"b_to_a\": " + DirectionJson(l->ba) + "}";
        }
        std::string wifi = g_wifi.empty() ? "" : ", \"wifi\": {" + WifiJson() + "}";
        std::fprintf(status,
                     "{\"event\": \"%s\", \"t_sim_s\": %.6f, \"unix_s\": %.6f, "
                     "\"interval_max_lag_ms\": %.4f, \"tick_lag\": %s, \"packet_lag\": %s, "
                     "\"links\": {%s}%s%s}\n",
                     event,
                     Simulator::Now().GetSeconds(),
                     static_cast<double>(UnixNs()) / 1e9,
                     static_cast<double>(g_intervalMaxNs) / 1e6,
                     g_tickLag.Json().c_str(),
                     g_packetLag.Json().c_str(),
                     links.c_str(),
                     wifi.c_str(),
                     extra.c_str());
        std::fflush(status);
        g_intervalMaxNs = 0;
    }

    void Tick()
    {
        NoteLag(g_tickLag, LagNs());
        int sig = g_signal.load();
        if (sig == SIGXCPU)
        {
            stopReason = "cpu_limit";
            stopDetail = "ns-3 ran at real-time priority without a pause for longer than its "
                         "RLIMIT_RTTIME allows (overloaded, or a bug)";
            Simulator::Stop();
            return;
        }
        if (sig)
        {
            stopReason = "signal";
            Simulator::Stop();
            return;
        }
        if (maxLagNs > 0 && g_intervalMaxNs > maxLagNs)
        {
            char buf[256];
            std::snprintf(buf,
                          sizeof buf,
                          "ns-3 fell %.2f ms behind real time at simulation time %.3f s "
                          "(limit %.2f ms)",
                          static_cast<double>(g_intervalMaxNs) / 1e6,
                          Simulator::Now().GetSeconds(),
                          static_cast<double>(maxLagNs) / 1e6);
            stopReason = "lag_exceeded";
            stopDetail = buf;
            Simulator::Stop();
            return;
        }
        int64_t now = Simulator::Now().GetNanoSeconds();
        if (now >= nextReportNs)
        {
            Line(nextReportNs == 0 ? "running" : "status", "");
            nextReportNs = now + reportEveryNs;
        }
        Simulator::Schedule(sample, &Watch::Tick, this);
    }

    void Start()
    {
        // The first event of the run (scheduled before Run(), so before the taps are read).
        g_epochNs = UnixNs() - g_rt->RealtimeNow().GetNanoSeconds();
        Tick();
    }
};

Watch g_watch;

// A one-off status line (association changes, commands applied), written by the
// simulator thread like every status line.
void
StatusEvent(const std::string& event, const std::string& fields)
{
    if (!g_watch.status)
    {
        return;
    }
    std::fprintf(g_watch.status,
                 "{\"event\": \"%s\", \"t_sim_s\": %.6f, \"unix_s\": %.6f, %s}\n",
                 event.c_str(),
                 Simulator::Now().GetSeconds(),
                 static_cast<double>(UnixNs()) / 1e9,
                 fields.c_str());
    std::fflush(g_watch.status);
}

void
OnSignal(int sig)
{
    g_signal.store(sig);
}

void
CopyOut(const std::string& s, char* out, size_t len)
{
    if (out && len)
    {
        std::strncpy(out, s.c_str(), len - 1);
        out[len - 1] = '\0';
    }
}

} // namespace

// --- C API (sim.py, through ctypes) -------------------------------------------

extern "C"
{
    // Real-time simulator and the random streams' seed; call first.
    void ns3link_setup(uint32_t seed, uint64_t run)
    {
        GlobalValue::Bind("SimulatorImplementationType", StringValue("ns3::RealtimeSimulatorImpl"));
        RngSeedManager::SetSeed(seed);
        RngSeedManager::SetRun(run);
    }

    // SIGTERM/SIGINT (and SIGXCPU, see sim.py's rt_priority) ask the watch to stop
    // the simulator at its next tick.
    void ns3link_install_signal_handlers()
    {
        struct sigaction sa = {};
        sa.sa_handler = &OnSignal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, nullptr);
        sigaction(SIGINT, &sa, nullptr);
        sigaction(SIGXCPU, &sa, nullptr);
    }

    // A stop asked for before the handlers were installed.
    void ns3link_request_stop(int sig)
    {
        g_signal.store(sig);
    }

    // One link between two tap descriptors; returns its index.
    int ns3link_add_link(const char* name,
                         int fdA,
                         int mtuA,
                         const char* pcapA,
                         int fdB,
                         int mtuB,
                         const char* pcapB,
                         double rateBps,
                         double delayNs,
                         double lossRate,
                         uint32_t queuePackets)
    {
        auto* link = new Link();
        link->name = name;
        Ptr<SimpleChannel> channel = CreateObject<SimpleChannel>();
        channel->SetAttribute("Delay", TimeValue(NanoSeconds(static_cast<int64_t>(delayNs))));
        link->channel = channel;
        MakeEnd(link->a, fdA, mtuA, channel, rateBps, queuePackets, lossRate, pcapA);
        MakeEnd(link->b, fdB, mtuB, channel, rateBps, queuePackets, lossRate, pcapB);
        link->a.out = link->b.in = &link->ab;
        link->b.out = link->a.in = &link->ba;
        for (LinkEnd* e : {&link->a, &link->b})
        {
            e->node->RegisterProtocolHandler(MakeBoundCallback(&FromTap, e), 0, e->tap, true);
            e->node->RegisterProtocolHandler(MakeBoundCallback(&FromWire, e), 0, e->wire, true);
        }
        link->b.wire->TraceConnectWithoutContext("PhyRxDrop",
                                                 MakeBoundCallback(&CountLoss, &link->ab));
        link->a.wire->TraceConnectWithoutContext("PhyRxDrop",
                                                 MakeBoundCallback(&CountLoss, &link->ba));
        g_links.push_back(link);
        return static_cast<int>(g_links.size()) - 1;
    }

    // A WiFi segment: an access point whose tap is fdAp, on a channel of its own.
    // standard: "80211a" | "80211g"; rateManager: "ideal" | "minstrel";
    // propagation: log-distance with this exponent and loss at 1 m; minRssiDbm: frames
    // received weaker than this are not detected (receiver sensitivity). Returns its index,
    // or -1 with the reason in err.
    int ns3link_add_wifi(const char* name,
                         const char* standard,
                         const char* rateManager,
                         double txPowerDbm,
                         double exponent,
                         double referenceLossDb,
                         double minRssiDbm,
                         double apX,
                         double apY,
                         double apZ,
                         const char* apMac,
                         int fdAp,
                         int mtuAp,
                         const char* pcapAp,
                         char* err,
                         size_t errLen)
    {
        auto* s = new Segment();
        s->name = name;
        s->standard = standard;
        s->minRssiDbm = minRssiDbm;
        std::string std_(standard);
        std::string rm(rateManager);
        if (std_ == "80211a")
        {
            s->wifi.SetStandard(WIFI_STANDARD_80211a);
        }
        else if (std_ == "80211g")
        {
            s->wifi.SetStandard(WIFI_STANDARD_80211g);
        }
        else
        {
            CopyOut("unknown standard " + std_ + " (80211a, 80211g)", err, errLen);
            delete s;
            return -1;
        }
        if (rm == "ideal")
        {
            s->wifi.SetRemoteStationManager("ns3::IdealWifiManager");
        }
        else if (rm == "minstrel")
        {
            s->wifi.SetRemoteStationManager("ns3::MinstrelWifiManager");
        }
        else
        {
            CopyOut("unknown rate manager " + rm + " (ideal, minstrel)", err, errLen);
            delete s;
            return -1;
        }
        s->phy.SetPreambleDetectionModel("ns3::ThresholdPreambleDetectionModel",
                                         "MinimumRssi",
                                         DoubleValue(s->minRssiDbm),
                                         "Threshold",
                                         DoubleValue(s->minSnrDb));
        auto loss = CreateObject<LogDistancePropagationLossModel>();
        loss->SetPathLossExponent(exponent);
        loss->SetReference(1.0, referenceLossDb);
        s->loss = loss;
        s->channel = CreateObject<YansWifiChannel>();
        s->channel->SetPropagationLossModel(loss);
        s->channel->SetPropagationDelayModel(CreateObject<ConstantSpeedPropagationDelayModel>());
        s->txPowerDbm = txPowerDbm;
        s->phy.SetChannel(s->channel);
        s->phy.Set("TxPowerStart", DoubleValue(txPowerDbm));
        s->phy.Set("TxPowerEnd", DoubleValue(txPowerDbm));
        s->phy.Set("RxNoiseFigure", DoubleValue(s->noiseFigureDb)); // not readable back: set it
        s->ssid = Ssid("daitn-" + s->name);

        s->apNode = CreateObject<Node>();
        auto apMob = CreateObject<ConstantPositionMobilityModel>();
        apMob->SetPosition(Vector(apX, apY, apZ));
        s->apNode->AggregateObject(apMob);
        s->apMob = apMob;
        WifiMacHelper mac;
        mac.SetType("ns3::ApWifiMac", "Ssid", SsidValue(s->ssid));
        s->apDev = DynamicCast<WifiNetDevice>(s->wifi.Install(s->phy, mac, s->apNode).Get(0));
        // The BSSID is set, not allocated: Mac48Address::Allocate() counts 00:..:01 up, as
        // the testbed numbers its hosts, and a station must never share the AP's address.
        SetWifiAddress(s->apDev, Mac48Address(apMac), true);
        s->apTap = MakeTap(s->apNode, fdAp, mtuAp);
        ConnectPcap(s->apTap, s->apPcap, pcapAp);
        s->apNode->RegisterProtocolHandler(MakeBoundCallback(&FromApTap, s), 0, s->apTap, true);
        s->apNode->RegisterProtocolHandler(MakeBoundCallback(&FromApRadio, s), 0, s->apDev, true);
        s->apDev->GetPhy()->TraceConnectWithoutContext("PhyTxPsduBegin", MakeBoundCallback(&ApTxPsdu, s));
        s->apDev->GetMac()->TraceConnectWithoutContext("MacTxDrop",
                                                       MakeBoundCallback(&CountDrop, &s->apMacTxDrops));

        // What the channel model says a station gets: noise in the channel width plus
        // the receiver's noise figure, and per mode the SNR the Ideal manager asks for.
        Ptr<WifiPhy> phy = s->apDev->GetPhy();
        double widthHz = phy->GetChannelWidth() * 1e6;
        s->noiseDbm = -174.0 + 10 * std::log10(widthHz) + s->noiseFigureDb;
        for (const WifiMode& m : phy->GetModeList())
        {
            WifiTxVector tx(m,
                            0,
                            WIFI_PREAMBLE_LONG,
                            NanoSeconds(800),
                            1,
                            1,
                            0,
                            phy->GetChannelWidth(),
                            false);
            double snr = phy->CalculateSnr(tx, 1e-6);
            s->modes.emplace_back(10 * std::log10(snr), static_cast<double>(m.GetDataRate(tx)));
        }
        g_wifi.push_back(s);
        return static_cast<int>(g_wifi.size()) - 1;
    }

    // A station of segment seg: host's tap fd, with the host's MAC, at (x, y, z) moving
    // at (vx, vy, vz) m/s. Returns its index in the segment.
    int ns3link_add_station(int seg,
                            const char* host,
                            const char* mac,
                            int fd,
                            int mtu,
                            const char* pcap,
                            double x,
                            double y,
                            double z,
                            double vx,
                            double vy,
                            double vz)
    {
        Segment* s = g_wifi.at(seg);
        auto* st = new Station();
        st->host = host;
        st->mac = Mac48Address(mac);
        st->node = CreateObject<Node>();
        st->mob = CreateObject<ConstantVelocityMobilityModel>();
        st->mob->SetPosition(Vector(x, y, z));
        st->mob->SetVelocity(Vector(vx, vy, vz));
        st->node->AggregateObject(st->mob);
        WifiMacHelper macHelper;
        macHelper.SetType("ns3::StaWifiMac", "Ssid", SsidValue(s->ssid), "ActiveProbing", BooleanValue(true));
        st->dev = DynamicCast<WifiNetDevice>(s->wifi.Install(s->phy, macHelper, st->node).Get(0));
        SetWifiAddress(st->dev, st->mac, false);
        st->tap = MakeTap(st->node, fd, mtu);
        ConnectPcap(st->tap, st->pcap, pcap);
        st->node->RegisterProtocolHandler(MakeBoundCallback(&FromStationTap, st), 0, st->tap, true);
        st->node->RegisterProtocolHandler(MakeBoundCallback(&FromStationRadio, st), 0, st->dev, true);
        st->dev->GetPhy()->TraceConnectWithoutContext("PhyTxPsduBegin",
                                                      MakeBoundCallback(&StationTxPsdu, st));
        Ptr<WifiMac> m = st->dev->GetMac();
        m->TraceConnectWithoutContext("MacTxDrop", MakeBoundCallback(&CountDrop, &st->macTxDrops));
        m->TraceConnectWithoutContext("Assoc", MakeBoundCallback(&OnAssoc, st));
        m->TraceConnectWithoutContext("DeAssoc", MakeBoundCallback(&OnDeassoc, st));
        s->stations.push_back(st);
        s->byMac[st->mac] = st;
        return static_cast<int>(s->stations.size()) - 1;
    }

    // --- changes while running: any thread; 0 scheduled, -1 not running, -2 no such thing

    // Rate (b/s, 0: unlimited), one-way delay (ns) and loss (0..1) of a link; a negative
    // value leaves that parameter as it is.
    int ns3link_set_link(int link, double rateBps, double delayNs, double lossRate, uint64_t id)
    {
        if (link < 0 || static_cast<size_t>(link) >= g_links.size())
        {
            return -2;
        }
        return ScheduleCommand(&DoSetLink, g_links[link], rateBps, delayNs, lossRate, id) ? 0 : -1;
    }

    // Move a station to (x, y, z): at once (speed <= 0) or at speed m/s in a straight line.
    int ns3link_wifi_move(int seg, int sta, double x, double y, double z, double speed, uint64_t id)
    {
        Station* st = FindStation(seg, sta);
        if (!st)
        {
            return -2;
        }
        return ScheduleCommand(&DoMove, st, Vector(x, y, z), speed, id) ? 0 : -1;
    }

    // Give a station a constant velocity (m/s); (0, 0, 0) stops it where it is.
    int ns3link_wifi_velocity(int seg, int sta, double vx, double vy, double vz, uint64_t id)
    {
        Station* st = FindStation(seg, sta);
        if (!st)
        {
            return -2;
        }
        return ScheduleCommand(&DoVelocity, st, Vector(vx, vy, vz), id) ? 0 : -1;
    }

    // A command the reader could not turn into a call: answered with a "rejected" line.
    int ns3link_reject(uint64_t id, const char* why)
    {
        return ScheduleCommand(&DoReject, id, std::string(why)) ? 0 : -1;
    }

    // Run until a signal or too much lag. Writes status lines to statusPath; returns
    // 0 (stopped by SIGTERM/SIGINT), 3 (fell behind real time), 4 (SIGXCPU) or 1
    // (other), with the reason and details in detail.
    int ns3link_run(const char* statusPath,
                    double sampleMs,
                    double reportEveryS,
                    double maxLagMs,
                    char* detail,
                    size_t detailLen)
    {
        Watch& w = g_watch;
        w.status = std::fopen(statusPath, "a");
        if (!w.status)
        {
            CopyOut(std::string("cannot open status file ") + statusPath, detail, detailLen);
            return 1;
        }
        w.sample = MicroSeconds(static_cast<int64_t>(sampleMs * 1000));
        w.reportEveryNs = static_cast<int64_t>(reportEveryS * 1e9);
        w.maxLagNs = static_cast<int64_t>(maxLagMs * 1e6);
        g_rt = DynamicCast<RealtimeSimulatorImpl>(Simulator::GetImplementation());
        if (!g_rt)
        {
            CopyOut("the simulator is not ns3::RealtimeSimulatorImpl", detail, detailLen);
            return 1;
        }
        Simulator::Schedule(Seconds(0), &Watch::Start, &w);
        {
            std::lock_guard<std::mutex> lock(g_cmdMutex);
            g_accepting = true;
        }
        Simulator::Run();
        {
            std::lock_guard<std::mutex> lock(g_cmdMutex);
            g_accepting = false;
        }
        std::string extra = ", \"reason\": \"" + w.stopReason + "\"";
        if (!w.stopDetail.empty())
        {
            extra += ", \"detail\": \"" + w.stopDetail + "\"";
        }
        w.Line("stopped", extra);
        std::fclose(w.status);
        w.status = nullptr;
        CopyOut(w.stopDetail.empty() ? w.stopReason : w.stopDetail, detail, detailLen);
        return w.stopReason == "signal"         ? 0
               : w.stopReason == "lag_exceeded" ? 3
               : w.stopReason == "cpu_limit"    ? 4
                                                : 1;
    }

    // Close the taps (FdNetDevice closes its descriptor when disposed) and the pcap
    // files (their trace callbacks would keep them open, unflushed, until exit).
    void ns3link_destroy()
    {
        Simulator::Destroy();
        for (Link* l : g_links)
        {
            for (LinkEnd* e : {&l->a, &l->b})
            {
                if (e->pcap)
                {
                    e->pcap->Close();
                }
            }
            delete l;
        }
        g_links.clear();
        for (Segment* s : g_wifi)
        {
            if (s->apPcap)
            {
                s->apPcap->Close();
            }
            for (Station* st : s->stations)
            {
                if (st->pcap)
                {
                    st->pcap->Close();
                }
                delete st;
            }
            delete s;
        }
        g_wifi.clear();
        g_rt = nullptr;
    }
}
