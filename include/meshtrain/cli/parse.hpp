#pragma once
// Strict parsing of command-line values and the one error path of meshtrain's programs.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace meshtrain {

class DistributedManager;

namespace cli {

// Each throws ConfigError "FLAG 'TEXT': why" for anything but a complete, in-range value.
int parse_int(const std::string& flag, const std::string& text);
std::uint64_t parse_uint64(const std::string& flag, const std::string& text);
double parse_double(const std::string& flag, const std::string& text);
// "2", "2,2", "(2, 2)", "(4,)", "2x2".
std::vector<int> parse_int_list(const std::string& flag, const std::string& text);
// "data", "data,fsdp", "('data', 'fsdp')".
std::vector<std::string> parse_name_list(const std::string& flag, const std::string& text);

// A ConfigError message that starts with a config field ("batch_size 0: ...") reads as the
// flag that sets it ("--batch-size 0: ...").
std::string with_flag_names(const std::string& message,
                            const std::map<std::string, std::string>& field_to_flag);

// Runs body(manager) inside a DistributedManager with meshtrain's error policy:
//  - ConfigError (bad input, raised identically on every rank): rank 0 prints
//    "PROGRAM: error: MESSAGE" on stderr, every rank finalises cleanly, exit code 2;
//  - TrainingError (e.g. a NaN loss, raised at the same step on every rank): the same, exit
//    code 3;
//  - any other exception: the failing rank prints "PROGRAM: rank R: error: MESSAGE" and
//    aborts the whole job (other ranks may be blocked in a collective), exit code 1.
int run_main(const std::string& program, int argc, char** argv,
             const std::function<int(DistributedManager&)>& body,
             const std::map<std::string, std::string>& field_to_flag = {});

}  // namespace cli
}  // namespace meshtrain
