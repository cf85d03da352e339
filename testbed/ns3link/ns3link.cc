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

#include <atomic>
#include <chrono>
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
    if (end->tap->SendFrom(frame, eth.GetSource(), eth.GetDestination(), eth.GetLengthType()))
    {
        end->in->frames_out++;
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
                  "\"loss_drops\": %llu, \"frames_out\": %llu, \"write_errors\": %llu}",
                  static_cast<unsigned long long>(d.frames_in),
                  static_cast<unsigned long long>(d.bytes_in),
                  static_cast<unsigned long long>(d.queue_drops),
                  static_cast<unsigned long long>(d.loss_drops),
                  static_cast<unsigned long long>(d.frames_out),
                  static_cast<unsigned long long>(d.write_errors));
    return buf;
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
        std::fprintf(status,
                     "{\"event\": \"%s\", \"t_sim_s\": %.6f, \"unix_s\": %.6f, "
                     "\"interval_max_lag_ms\": %.4f, \"tick_lag\": %s, \"packet_lag\": %s, "
                     "\"links\": {%s}%s}\n",
                     event,
                     Simulator::Now().GetSeconds(),
                     static_cast<double>(UnixNs()) / 1e9,
                     static_cast<double>(g_intervalMaxNs) / 1e6,
                     g_tickLag.Json().c_str(),
                     g_packetLag.Json().c_str(),
                     links.c_str(),
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
        Simulator::Run();
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
        g_rt = nullptr;
    }
}
