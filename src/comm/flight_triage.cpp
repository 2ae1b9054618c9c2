// meshtrain triage: reads every rank's flight recorder dump and names the first collective on
// which the ranks of a group diverge, and the rank that is missing, lagging or calling
// something else.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "meshtrain/comm/flight_recorder.hpp"

namespace meshtrain {

namespace fs = std::filesystem;

FlightDump read_flight_dump(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  const std::string blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  FlightDump dump;
  dump.path = path;
  if (blob.size() < sizeof(flight::Header) ||
      std::memcmp(blob.data(), flight::kMagic, sizeof flight::kMagic) != 0) {
    throw std::runtime_error(path + ": not a meshtrain flight recorder dump");
  }
  std::memcpy(static_cast<void*>(&dump.header), blob.data(), sizeof(flight::Header));
  const flight::Header& h = dump.header;
  if (h.version != flight::kVersion || h.record_bytes != sizeof(flight::Record) ||
      h.header_bytes < sizeof(flight::Header) || h.group_count > flight::kMaxGroups ||
      blob.size() < h.header_bytes + static_cast<std::size_t>(h.capacity) * h.record_bytes) {
    throw std::runtime_error(path + ": a flight recorder dump of another version or truncated");
  }
  dump.groups.assign(h.groups, h.groups + h.group_count);
  std::vector<flight::Record> records;
  for (std::uint32_t slot = 0; slot < h.capacity; ++slot) {
    flight::Record r;
    std::memcpy(static_cast<void*>(&r), blob.data() + h.header_bytes + slot * h.record_bytes,
                sizeof r);
    // A record is whole when its ticket belongs to its slot and was issued (a process that
    // died while writing one leaves its ticket 0).
    if (r.ticket == 0 || r.ticket > h.written || (r.ticket - 1) % h.capacity != slot) continue;
    if (r.group >= h.group_count) continue;
    r.site[sizeof r.site - 1] = '\0';
    records.push_back(r);
  }
  std::sort(records.begin(), records.end(),
            [](const flight::Record& a, const flight::Record& b) { return a.ticket < b.ticket; });
  dump.records = std::move(records);
  return dump;
}

namespace {

constexpr const char* kTypeNames[] = {"float32", "float64", "int32", "int64"};

std::string describe(const flight::Record& r) {
  std::string out(name_of(static_cast<FlightOp>(r.op)));
  if (static_cast<FlightOp>(r.op) != FlightOp::Barrier) {
    out += " of " + std::to_string(r.count) + " " +
           (r.dtype < std::size(kTypeNames) ? kTypeNames[r.dtype] : "?");
  }
  if (r.root >= 0) out += " from root " + std::to_string(r.root);
  if (r.site[0]) out += std::string(" at ") + r.site;
  return out;
}

// What must agree across the group (scatterv's counts differ by rank, and the site may too).
std::tuple<int, int, std::uint64_t, int> signature(const flight::Record& r) {
  const bool scatterv = static_cast<FlightOp>(r.op) == FlightOp::Scatterv;
  return {r.op, r.dtype, scatterv ? 0 : r.count, r.root};
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string out = ranks.size() == 1 ? "rank " : "ranks ";
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(ranks[i]);
  }
  return out;
}

std::string step_text(const flight::Record& r) {
  return r.step >= 0 ? " (step " + std::to_string(r.step) + ")" : std::string(" (before training)");
}

std::int64_t unix_ns(const FlightDump& d, std::int64_t steady) {
  return d.header.origin_unix_ns + (steady - d.header.origin_steady_ns);
}

struct Instance {
  std::string name;
  int color = 0;
  int size = 0;
  // rank -> its records of this group, by sequence
  std::map<int, std::map<std::uint64_t, const flight::Record*>> records;
  std::map<int, const FlightDump*> dumps;
};

struct Divergence {
  std::int64_t when = std::numeric_limits<std::int64_t>::max();  // unix ns, earliest first
  std::string text;
  std::vector<int> culprits;
};

std::optional<Divergence> diverges(const Instance& g) {
  std::uint64_t lo = 0, hi = 0;
  std::map<int, std::uint64_t> last;
  for (const auto& [rank, recs] : g.records) {
    last[rank] = recs.empty() ? 0 : recs.rbegin()->first;
    hi = std::max(hi, last[rank]);
    if (!recs.empty()) lo = std::max(lo, recs.begin()->first);
  }
  if (hi == 0) return std::nullopt;
  for (std::uint64_t s = std::max<std::uint64_t>(lo, 1); s <= hi; ++s) {
    std::vector<int> absent;
    std::map<std::tuple<int, int, std::uint64_t, int>, std::vector<int>> calls;
    std::map<std::tuple<int, int, std::uint64_t, int>, const flight::Record*> example;
    std::int64_t when = std::numeric_limits<std::int64_t>::max();
    for (const auto& [rank, recs] : g.records) {
      if (last.at(rank) < s) {
        absent.push_back(rank);
        continue;
      }
      const auto it = recs.find(s);
      if (it == recs.end()) continue;  // torn or overwritten: no evidence either way
      calls[signature(*it->second)].push_back(rank);
      example[signature(*it->second)] = it->second;
      when = std::min(when, unix_ns(*g.dumps.at(rank), it->second->enqueue_ns));
    }
    if (absent.empty() && calls.size() <= 1) continue;
    Divergence d;
    d.when = when;
    const std::string head = "collective #" + std::to_string(s) + " on '" + g.name + "'";
    if (calls.size() > 1) {
      // The call most ranks made is taken as the intended one; the others are the culprits
      // (with a tie, every side is named).
      std::size_t most = 0;
      for (const auto& [sig, ranks] : calls) most = std::max(most, ranks.size());
      std::size_t with_most = 0;
      for (const auto& [sig, ranks] : calls) with_most += ranks.size() == most;
      d.text = head + ": the ranks called different collectives:";
      bool first = true;
      for (const auto& [sig, ranks] : calls) {
        d.text += std::string(first ? " " : "; ") + rank_list(ranks) + " called " +
                  describe(*example.at(sig)) + step_text(*example.at(sig));
        first = false;
        if (ranks.size() < most || with_most > 1) {
          d.culprits.insert(d.culprits.end(), ranks.begin(), ranks.end());
        }
      }
    } else {
      const auto& [sig, ranks] = *calls.begin();
      const flight::Record& r = *example.at(sig);
      d.text = head + ": " + rank_list(ranks) + " entered " + describe(r) + step_text(r) + "; ";
      for (std::size_t i = 0; i < absent.size(); ++i) {
        const int rank = absent[i];
        const auto& recs = g.records.at(rank);
        d.text += (i ? "; " : "") + rank_list({rank}) + " never reached it (its last: ";
        if (recs.empty()) {
          d.text += "none on this group";
        } else {
          const flight::Record& l = *recs.rbegin()->second;
          d.text += "#" + std::to_string(l.sequence) + " " + describe(l) + step_text(l) +
                    (l.end_ns ? ", completed" : ", not completed");
        }
        d.text += ")";
      }
      d.culprits = absent;
    }
    std::sort(d.culprits.begin(), d.culprits.end());
    return d;
  }
  return std::nullopt;
}

}  // namespace

TriageReport triage_flight_dumps(const std::vector<FlightDump>& dumps) {
  TriageReport report;
  if (dumps.empty()) {
    report.code = 2;
    report.finding = "no flight recorder dumps";
    return report;
  }
  int world_size = 0;
  std::map<int, const FlightDump*> by_rank;
  for (const FlightDump& d : dumps) {
    world_size = std::max(world_size, d.header.world_size);
    by_rank[d.header.world_rank] = &d;
  }
  std::map<std::pair<std::string, int>, Instance> groups;
  for (const FlightDump& d : dumps) {
    const int rank = d.header.world_rank;
    for (std::size_t gi = 0; gi < d.groups.size(); ++gi) {
      const flight::Group& fg = d.groups[gi];
      Instance& g = groups[{std::string(fg.name), fg.color}];
      g.name = fg.name;
      g.color = fg.color;
      g.size = std::max(g.size, fg.size);
      g.dumps[rank] = &d;
      std::map<std::uint64_t, const flight::Record*> recs;
      for (const flight::Record& r : d.records) {
        if (r.group == gi) recs[r.sequence] = &r;
      }
      // A ring that wrapped and holds none of this group's collectives says nothing about
      // them (its later collectives were all on other groups); otherwise the ring is in call
      // order, so the newest record of the group is truly this rank's last on it.
      if (recs.empty() && d.header.written > d.header.capacity) continue;
      g.records[rank] = std::move(recs);
    }
  }
  for (const auto& [rank, d] : by_rank) {
    std::string line = "rank " + std::to_string(rank) + ": " +
                       std::string(name_of(static_cast<FlightReason>(d->header.reason))) + ", " +
                       std::to_string(d->header.written) + " collectives";
    if (!d->records.empty()) {
      const flight::Record& l = d->records.back();
      line += ", last: #" + std::to_string(l.sequence) + " on '" +
              std::string(d->groups[l.group].name) + "' " + describe(l) + step_text(l) +
              (l.end_ns ? ", completed" : ", not completed");
    }
    report.details.push_back(line);
  }
  std::optional<Divergence> first;
  for (const auto& [key, g] : groups) {
    if (auto d = diverges(g); d && (!first || d->when < first->when)) first = d;
  }
  std::vector<int> missing;
  for (int r = 0; r < world_size; ++r) {
    if (!by_rank.count(r)) missing.push_back(r);
  }
  if (!missing.empty()) {
    report.details.push_back(rank_list(missing) + " left no dump");
  }
  if (first) {
    report.code = 1;
    report.finding = first->text;
    report.culprits = first->culprits;
    return report;
  }
  if (!missing.empty()) {
    report.code = 1;
    report.finding = "every dump agrees, but " + rank_list(missing) + " of " +
                     std::to_string(world_size) + " left no dump";
    report.culprits = missing;
    return report;
  }
  report.finding = "consistent: the " + std::to_string(world_size) +
                   " ranks called the same collectives on every group";
  return report;
}

TriageReport triage_flight_directory(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    TriageReport r;
    r.code = 2;
    r.finding = dir + ": not a directory";
    return r;
  }
  std::vector<std::string> paths;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with("flight-rank") && name.ends_with(".bin")) paths.push_back(entry.path());
  }
  std::sort(paths.begin(), paths.end());
  std::vector<FlightDump> dumps;
  for (const std::string& p : paths) dumps.push_back(read_flight_dump(p));
  TriageReport r = triage_flight_dumps(dumps);
  if (dumps.empty()) r.finding = dir + ": holds no flight recorder dumps (flight-rank*.bin)";
  return r;
}

}  // namespace meshtrain
