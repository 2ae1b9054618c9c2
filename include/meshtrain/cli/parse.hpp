#pragma once
// Strict parsing of command-line values and the one error path of meshtrain's programs.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace meshtrain {

class ConfigError;
class DistributedManager;

namespace cli {

// Each throws ConfigError "FLAG 'TEXT': why" (its field() the flag) for anything but a
// complete, in-range value.
int parse_int(const std::string& flag, const std::string& text);
std::uint64_t parse_uint64(const std::string& flag, const std::string& text);
double parse_double(const std::string& flag, const std::string& text);
// "2", "2,2", "(2, 2)", "(4,)", "2x2".
std::vector<int> parse_int_list(const std::string& flag, const std::string& text);
// "data", "data,fsdp", "('data', 'fsdp')".
std::vector<std::string> parse_name_list(const std::string& flag, const std::string& text);

// The message of a ConfigError about a config field ("batch_size 0: ...") with the flag that
// sets the field in its place ("--batch-size 0: ..."); error.what() for a field not in the map
// (or none).
std::string with_flag_name(const ConfigError& error,
                           const std::map<std::string, std::string>& field_to_flag);

// Runs body(manager) inside a DistributedManager with meshtrain's error policy:
//  - ConfigError (bad input, raised identically on every rank): rank 0 prints
//    "PROGRAM: error: MESSAGE" on stderr (the error's field named by its flag in
//    field_to_flag), every rank finalises cleanly, exit code 2;
//  - TrainingError (e.g. a NaN loss, raised at the same step on every rank): the same, exit
//    code 3;
//  - any other exception: the failing rank prints "PROGRAM: rank R: error: MESSAGE" and
//    aborts the whole job (other ranks may be blocked in a collective), exit code 1.
int run_main(const std::string& program, int argc, char** argv,
             const std::function<int(DistributedManager&)>& body,
             const std::map<std::string, std::string>& field_to_flag = {});

}  // namespace cli
}  // namespace meshtrain
