#include <gtest/gtest.h>
TEST(Redis, Placeholder) {}
