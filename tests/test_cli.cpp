// Strict command-line value parsing, ConfigError's field, and the field-to-flag naming of
// error messages.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "meshtrain/cli/parse.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/train/training_config.hpp"
#include "test_support.hpp"

namespace {

using namespace meshtrain;
using namespace meshtrain::cli;
using namespace meshtrain::testing;

// The message must read "FLAG 'TEXT': why".
void expect_flag_error(const std::string& message, const std::string& flag, const std::string& text) {
  EXPECT_TRUE(starts_with(message, flag + " '" + text + "': ")) << "message: " << message;
}

// ---------------------------------------------------------------------------------------
// parse_int

TEST(ParseInt, AcceptsCompleteIntegers) {
  EXPECT_EQ(parse_int("--epochs", "2"), 2);
  EXPECT_EQ(parse_int("--epochs", " 3 "), 3);
  EXPECT_EQ(parse_int("--epochs", "\t5\t"), 5);
  EXPECT_EQ(parse_int("--epochs", "+4"), 4);
  EXPECT_EQ(parse_int("--epochs", "-7"), -7);
  EXPECT_EQ(parse_int("--epochs", "0"), 0);
  EXPECT_EQ(parse_int("--epochs", "007"), 7);
  EXPECT_EQ(parse_int("--epochs", "2147483647"), std::numeric_limits<int>::max());
  EXPECT_EQ(parse_int("--epochs", "-2147483648"), std::numeric_limits<int>::min());
}

TEST(ParseInt, RejectsMalformedText) {
  for (const std::string text : {"abc", "1.5", "12abc", "", "   ", "+", "-", "++4", "4 4", "0x10",
                                 "1e3", "2,"}) {
    expect_flag_error(config_error([&] { parse_int("--epochs", text); }), "--epochs", text);
  }
}

// LIBRARY BUG (src/cli/parse.cpp, parse_integer): a leading '+' is skipped before
// std::from_chars, which itself accepts a leading '-', so "+-4" parses as -4 instead of
// being rejected. Fix: after skipping '+', reject text whose next character is '-'
// (e.g. `if (first != last && *first == '-' && first != t.data()) bad(...)`). Fails until then.
TEST(ParseInt, RejectsPlusMinus) {
  expect_flag_error(config_error([] { parse_int("--epochs", "+-4"); }), "--epochs", "+-4");
}

TEST(ParseInt, RejectsOutOfRange) {
  for (const std::string text : {"99999999999", "2147483648", "-2147483649"}) {
    const std::string m = config_error([&] { parse_int("--batch-size", text); });
    expect_flag_error(m, "--batch-size", text);
    EXPECT_NE(m.find("out of range"), std::string::npos) << m;
  }
}

// ---------------------------------------------------------------------------------------
// parse_uint64

TEST(ParseUint64, AcceptsFullRange) {
  EXPECT_EQ(parse_uint64("--seed", "0"), 0u);
  EXPECT_EQ(parse_uint64("--seed", " 42 "), 42u);
  EXPECT_EQ(parse_uint64("--seed", "+9"), 9u);
  EXPECT_EQ(parse_uint64("--seed", "18446744073709551615"), std::numeric_limits<std::uint64_t>::max());
}

TEST(ParseUint64, RejectsNegativeMalformedAndOverflow) {
  std::string m = config_error([] { parse_uint64("--seed", "-1"); });
  expect_flag_error(m, "--seed", "-1");
  EXPECT_NE(m.find("negative"), std::string::npos) << m;
  expect_flag_error(config_error([] { parse_uint64("--seed", " -0"); }), "--seed", " -0");
  expect_flag_error(config_error([] { parse_uint64("--seed", "+-1"); }), "--seed", "+-1");
  for (const std::string text : {"abc", "1.0", "", "7x", "18446744073709551616", "99999999999999999999999"}) {
    expect_flag_error(config_error([&] { parse_uint64("--seed", text); }), "--seed", text);
  }
}

// ---------------------------------------------------------------------------------------
// parse_double

TEST(ParseDouble, AcceptsNumbers) {
  EXPECT_EQ(parse_double("--lr", "1e-3"), 1e-3);
  EXPECT_EQ(parse_double("--lr", " 0.5 "), 0.5);
  EXPECT_EQ(parse_double("--lr", "2"), 2.0);
  EXPECT_EQ(parse_double("--lr", "-2.5"), -2.5);
  EXPECT_EQ(parse_double("--lr", "+.25"), 0.25);
  EXPECT_EQ(parse_double("--lr", "3E2"), 300.0);
  // Non-finite spellings parse; TrainingConfig::validate rejects them later.
  EXPECT_TRUE(std::isnan(parse_double("--lr", "nan")));
  EXPECT_TRUE(std::isinf(parse_double("--lr", "inf")));
}

TEST(ParseDouble, RejectsMalformedAndOverflow) {
  for (const std::string text : {"abc", "", "  ", "1e", "1.5.2", "1,5", "0.1x", "e5", "--1"}) {
    const std::string m = config_error([&] { parse_double("--lr", text); });
    expect_flag_error(m, "--lr", text);
  }
  for (const std::string text : {"1e999", "-1e999"}) {
    const std::string m = config_error([&] { parse_double("--lr", text); });
    expect_flag_error(m, "--lr", text);
    EXPECT_NE(m.find("out of range"), std::string::npos) << m;
  }
}

TEST(ParseDouble, NanIsRejectedByValidation) {
  TrainingConfig c;
  c.learning_rate = parse_double("--lr", "nan");
  EXPECT_THROW(c.validate(1), ConfigError);
  c.learning_rate = parse_double("--lr", "inf");
  EXPECT_THROW(c.validate(1), ConfigError);
}

// ---------------------------------------------------------------------------------------
// parse_int_list

TEST(ParseIntList, AcceptsTupleAndListSpellings) {
  using V = std::vector<int>;
  EXPECT_EQ(parse_int_list("--mesh-shape", "2"), V{2});
  EXPECT_EQ(parse_int_list("--mesh-shape", "2,2"), (V{2, 2}));
  EXPECT_EQ(parse_int_list("--mesh-shape", "(2, 2)"), (V{2, 2}));
  EXPECT_EQ(parse_int_list("--mesh-shape", "(4,)"), V{4});
  EXPECT_EQ(parse_int_list("--mesh-shape", "[2, 3]"), (V{2, 3}));
  EXPECT_EQ(parse_int_list("--mesh-shape", "2x2"), (V{2, 2}));
  EXPECT_EQ(parse_int_list("--mesh-shape", " ( 1 , 2 , 3 ) "), (V{1, 2, 3}));
}

TEST(ParseIntList, RejectsMalformedLists) {
  // Structural errors quote the whole text.
  for (const std::string text : {"2,,2", "(,)", "", "()", ",2", "(, 2)"}) {
    expect_flag_error(config_error([&] { parse_int_list("--mesh-shape", text); }), "--mesh-shape",
                      text);
  }
  // A bad element is reported with the flag and the element.
  std::string m = config_error([] { parse_int_list("--mesh-shape", "(2, a)"); });
  expect_flag_error(m, "--mesh-shape", "a");
  m = config_error([] { parse_int_list("--mesh-shape", "(2, 2"); });
  EXPECT_TRUE(starts_with(m, "--mesh-shape '")) << m;
  m = config_error([] { parse_int_list("--mesh-shape", "2, 99999999999"); });
  EXPECT_TRUE(starts_with(m, "--mesh-shape '")) << m;
  EXPECT_NE(m.find("99999999999"), std::string::npos) << m;
}

// ---------------------------------------------------------------------------------------
// parse_name_list

TEST(ParseNameList, AcceptsTupleAndListSpellings) {
  using V = std::vector<std::string>;
  EXPECT_EQ(parse_name_list("--mesh-axis-names", "data"), V{"data"});
  EXPECT_EQ(parse_name_list("--mesh-axis-names", "data,fsdp"), (V{"data", "fsdp"}));
  EXPECT_EQ(parse_name_list("--mesh-axis-names", " data , fsdp "), (V{"data", "fsdp"}));
  EXPECT_EQ(parse_name_list("--mesh-axis-names", "('data', 'fsdp')"), (V{"data", "fsdp"}));
  EXPECT_EQ(parse_name_list("--mesh-axis-names", "('data',)"), V{"data"});
  EXPECT_EQ(parse_name_list("--mesh-axis-names", "[\"data\", \"model_2\"]"), (V{"data", "model_2"}));
}

TEST(ParseNameList, RejectsMalformedLists) {
  for (const std::string text : {"", "(,)", "()", "data,,fsdp", ",data", "da-ta", "da ta", "'data",
                                 "('data', 'fsdp'", "('data\")"}) {
    expect_flag_error(config_error([&] { parse_name_list("--mesh-axis-names", text); }),
                      "--mesh-axis-names", text);
  }
}

// ---------------------------------------------------------------------------------------
// with_flag_name: the error's field, not its message, decides.

TEST(WithFlagName, NamesTheFlagOfTheErrorsField) {
  const std::map<std::string, std::string> flags = {{"batch_size", "--batch-size"},
                                                    {"num_epochs", "--epochs"},
                                                    {"mesh_shape", "--mesh-shape"},
                                                    {"model widths", "--hidden/--layers"}};
  EXPECT_EQ(with_flag_name(ConfigError("batch_size", "0: must be at least 1"), flags),
            "--batch-size 0: must be at least 1");
  EXPECT_EQ(with_flag_name(ConfigError("num_epochs", "-1: must be at least 1"), flags),
            "--epochs -1: must be at least 1");
  EXPECT_EQ(with_flag_name(ConfigError("mesh_shape", "(2, 2): describes 4 devices"), flags),
            "--mesh-shape (2, 2): describes 4 devices");
  EXPECT_EQ(with_flag_name(ConfigError("model widths", "[4, 0, 1]: width 0 must be >= 1"), flags),
            "--hidden/--layers [4, 0, 1]: width 0 must be >= 1");
  // A field without a flag, or no field: the message as it is.
  EXPECT_EQ(with_flag_name(ConfigError("learning_rate", "0: must be > 0"), flags),
            "learning_rate 0: must be > 0");
  EXPECT_EQ(with_flag_name(ConfigError("batch_size 0: x"), flags), "batch_size 0: x");
  EXPECT_EQ(with_flag_name(ConfigError(""), flags), "");
  EXPECT_EQ(with_flag_name(ConfigError("batch_size", "0: x"), {}), "batch_size 0: x");
  // A flag's own error (field the flag) stays.
  EXPECT_EQ(with_flag_name(config_error_object([] { parse_int("--epochs", "x"); }), flags),
            "--epochs 'x': not an integer");
}

TEST(WithFlagName, AppliesToValidationErrors) {
  TrainingConfig c;
  c.batch_size = 0;
  const ConfigError e = config_error_object([&] { c.validate(1); });
  EXPECT_EQ(e.field(), "batch_size");
  EXPECT_EQ(with_flag_name(e, {{"batch_size", "--batch-size"}}),
            "--batch-size 0: must be at least 1");
}

// ---------------------------------------------------------------------------------------
// ConfigError

TEST(ConfigError, FieldAndDetailMakeTheMessage) {
  const ConfigError e("batch_size", "0: must be at least 1");
  EXPECT_STREQ(e.what(), "batch_size 0: must be at least 1");
  EXPECT_EQ(e.field(), "batch_size");
  EXPECT_EQ(e.detail(), "0: must be at least 1");
  const ConfigError copy = e;  // what() is where both live
  EXPECT_EQ(copy.field(), "batch_size");
  EXPECT_EQ(copy.detail(), "0: must be at least 1");

  const ConfigError plain("data: give train_x and train_y");
  EXPECT_EQ(plain.field(), "");
  EXPECT_EQ(plain.detail(), "data: give train_x and train_y");
  const ConfigError no_field("", "just a detail");
  EXPECT_STREQ(no_field.what(), "just a detail");
  EXPECT_EQ(no_field.field(), "");
  EXPECT_EQ(no_field.detail(), "just a detail");
}

TEST(ConfigError, FlagParsersSetTheFlagAsField) {
  const ConfigError e = config_error_object([] { parse_double("--lr", "abc"); });
  EXPECT_EQ(e.field(), "--lr");
  EXPECT_EQ(e.detail(), "'abc': not a number");
}

}  // namespace
