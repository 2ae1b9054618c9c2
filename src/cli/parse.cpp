#include "meshtrain/cli/parse.hpp"

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <system_error>

#include "meshtrain/error.hpp"
#include "meshtrain/runtime/distributed_manager.hpp"

namespace meshtrain::cli {

namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

[[noreturn]] void bad(const std::string& flag, const std::string& text, const std::string& why) {
  throw ConfigError(flag, "'" + text + "': " + why);
}

template <class T>
T parse_integer(const std::string& flag, const std::string& text) {
  const std::string t = trim(text);
  T value{};
  const char* first = t.data();
  const char* last = t.data() + t.size();
  if (!t.empty() && t[0] == '+') {
    ++first;
    if (first != last && *first == '-') bad(flag, text, "not an integer");
  }
  const auto [ptr, ec] = std::from_chars(first, last, value);
  if (t.empty() || ec == std::errc::invalid_argument || ptr != last) {
    bad(flag, text, "not an integer");
  }
  if (ec == std::errc::result_out_of_range) bad(flag, text, "out of range");
  return value;
}

std::vector<std::string> split_list(const std::string& text) {
  std::string t = trim(text);
  if (t.size() >= 2 && ((t.front() == '(' && t.back() == ')') || (t.front() == '[' && t.back() == ']'))) {
    t = t.substr(1, t.size() - 2);
  }
  std::vector<std::string> parts;
  std::string current;
  for (char c : t) {
    if (c == ',' || c == 'x') {
      parts.push_back(trim(current));
      current.clear();
    } else {
      current += c;
    }
  }
  parts.push_back(trim(current));
  // A trailing comma as in "(4,)" ends a one-element tuple.
  if (parts.size() > 1 && parts.back().empty()) parts.pop_back();
  return parts;
}

}  // namespace

int parse_int(const std::string& flag, const std::string& text) {
  return parse_integer<int>(flag, text);
}

std::uint64_t parse_uint64(const std::string& flag, const std::string& text) {
  if (trim(text).starts_with("-")) bad(flag, text, "must not be negative");
  return parse_integer<std::uint64_t>(flag, text);
}

double parse_double(const std::string& flag, const std::string& text) {
  const std::string t = trim(text);
  if (t.empty()) bad(flag, text, "not a number");
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(t.c_str(), &end);
  if (end != t.c_str() + t.size()) bad(flag, text, "not a number");
  if (errno == ERANGE && std::isinf(value)) bad(flag, text, "out of range");
  return value;
}

std::vector<int> parse_int_list(const std::string& flag, const std::string& text) {
  std::vector<int> out;
  for (const auto& part : split_list(text)) {
    if (part.empty()) bad(flag, text, "expected integers separated by commas, e.g. 2 or 2,2");
    out.push_back(parse_int(flag, part));
  }
  return out;
}

std::vector<std::string> parse_name_list(const std::string& flag, const std::string& text) {
  std::string t = trim(text);
  if (t.size() >= 2 && ((t.front() == '(' && t.back() == ')') || (t.front() == '[' && t.back() == ']'))) {
    t = t.substr(1, t.size() - 2);
  }
  std::vector<std::string> out;
  std::string current;
  auto finish = [&](bool last) {
    std::string name = trim(current);
    current.clear();
    if (name.size() >= 2 && (name.front() == '\'' || name.front() == '"') && name.back() == name.front()) {
      name = name.substr(1, name.size() - 2);
    }
    if (name.empty()) {
      if (last && !out.empty()) return;  // trailing comma of a one-element tuple
      bad(flag, text, "empty axis name");
    }
    for (char c : name) {
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) {
        bad(flag, text, "axis names are made of letters, digits and '_'");
      }
    }
    out.push_back(name);
  };
  for (char c : t) {
    if (c == ',') {
      finish(false);
    } else {
      current += c;
    }
  }
  finish(true);
  return out;
}

std::string with_flag_name(const ConfigError& error,
                           const std::map<std::string, std::string>& field_to_flag) {
  const auto it = field_to_flag.find(error.field());
  if (it == field_to_flag.end()) return error.what();
  return it->second + " " + error.detail();
}

int run_main(const std::string& program, int argc, char** argv,
             const std::function<int(DistributedManager&)>& body,
             const std::map<std::string, std::string>& field_to_flag) {
  std::unique_ptr<DistributedManager> manager;
  try {
    manager = std::make_unique<DistributedManager>(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: cannot start MPI and Kokkos: %s\n", program.c_str(), e.what());
    return 1;
  }
  const int rank = manager->rank();
  try {
    const int code = body(*manager);
    manager.reset();
    return code;
  } catch (const ConfigError& e) {
    if (rank == 0) {
      std::fprintf(stderr, "%s: error: %s\n", program.c_str(),
                   with_flag_name(e, field_to_flag).c_str());
      std::fflush(stderr);
    }
    manager.reset();
    return 2;
  } catch (const TrainingError& e) {
    // Raised at the same step on every rank: report once and end cleanly.
    if (rank == 0) {
      std::fprintf(stderr, "%s: error: %s\n", program.c_str(), e.what());
      std::fflush(stderr);
    }
    manager.reset();
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: rank %d: error: %s\n", program.c_str(), rank, e.what());
    std::fflush(stderr);
    manager->abort(1);
  }
}

}  // namespace meshtrain::cli
