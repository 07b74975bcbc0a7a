// What the parts of the stampede demo share: the SQLite table every worker
// loads rows from, and the way figures are printed.  Header-only, because
// the demo is one program built from a few files.
#pragma once

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace stampede {

using Clock = std::chrono::steady_clock;

// Ends the program with status 2.  _Exit, not exit: this also runs in the
// demo's forked worker processes, where exit() would run the parent's
// atexit handlers and flush a copy of its stdio buffers a second time.
[[noreturn]] inline void die(const std::string &what) {
    std::fprintf(stderr, "stampede: %s\n", what.c_str());
    std::fflush(nullptr);
    std::_Exit(2);
}

// One read-only connection to the demo's table.  Not thread-safe: each
// worker thread owns one, opened in the process that uses it (SQLite
// connections must not cross a fork).
class Db {
public:
    explicit Db(const std::string &path) {
        if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                            nullptr) != SQLITE_OK)
            die("cannot open the database: " + std::string(sqlite3_errmsg(db_)));
        if (sqlite3_prepare_v2(db_, "SELECT name, price, stock FROM items WHERE id = ?1", -1,
                               &stmt_, nullptr) != SQLITE_OK)
            die("cannot prepare the query: " + std::string(sqlite3_errmsg(db_)));
    }
    ~Db() {
        sqlite3_finalize(stmt_);
        sqlite3_close(db_);
    }
    Db(const Db &) = delete;
    Db &operator=(const Db &) = delete;

    // The row with this id as text, or "" when there is none.
    std::string load(int id) {
        sqlite3_reset(stmt_);
        sqlite3_bind_int(stmt_, 1, id);
        std::string row;
        if (sqlite3_step(stmt_) == SQLITE_ROW) {
            row = reinterpret_cast<const char *>(sqlite3_column_text(stmt_, 0));
            row += " $" + std::to_string(sqlite3_column_double(stmt_, 1));
            row += " x" + std::to_string(sqlite3_column_int(stmt_, 2));
        }
        return row;
    }

private:
    sqlite3 *db_ = nullptr;
    sqlite3_stmt *stmt_ = nullptr;
};

// Creates the table items(id, name, price, stock) with ids 0..rows-1 in a
// new database file at path.
inline void create_db(const std::string &path, int rows) {
    sqlite3 *db = nullptr;
    if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) die("cannot create the database");
    char *err = nullptr;
    auto exec = [&](const char *sql) {
        if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) die(err ? err : sql);
    };
    exec(
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
        "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, stock INTEGER);"
        "BEGIN;");
    sqlite3_stmt *ins = nullptr;
    sqlite3_prepare_v2(db, "INSERT INTO items VALUES(?1, ?2, ?3, ?4)", -1, &ins, nullptr);
    for (int i = 0; i < rows; ++i) {
        std::string name = "item-" + std::to_string(i);
        sqlite3_bind_int(ins, 1, i);
        sqlite3_bind_text(ins, 2, name.c_str(), -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(ins, 3, 1.0 + (i % 997) / 10.0);
        sqlite3_bind_int(ins, 4, (i * 7919) % 1000);
        if (sqlite3_step(ins) != SQLITE_DONE) die("insert failed");
        sqlite3_reset(ins);
    }
    sqlite3_finalize(ins);
    exec("COMMIT;");
    sqlite3_close(db);
}

inline std::string fmt(const char *f, double v) {
    char b[64];
    std::snprintf(b, sizeof b, f, v);
    return b;
}

// A cache hit takes nanoseconds to microseconds and a query milliseconds:
// one unit would print some of them as 0.000.
inline std::string fmt_latency(double ms) {
    if (ms < 0.001) return fmt("%.0f ns", ms * 1e6);
    return ms < 1.0 ? fmt("%.1f us", ms * 1000.0) : fmt("%.2f ms", ms);
}

// The p-th quantile (0..1) of sorted samples, 0 for none.
inline double quantile(const std::vector<float> &sorted, double p) {
    return sorted.empty() ? 0.0 : double(sorted[std::size_t(p * double(sorted.size() - 1))]);
}

struct Row {
    const char *name;
    std::vector<std::string> cells;  // one per column
};

// A table with a column per run, right-aligned, each as wide as its widest
// cell.
inline void print_table(const std::vector<std::string> &columns, const std::vector<Row> &rows) {
    std::size_t label = 0;
    std::vector<std::size_t> width;
    for (const std::string &c : columns) width.push_back(c.size());
    for (const Row &r : rows) {
        label = std::max(label, std::string(r.name).size());
        for (std::size_t i = 0; i < r.cells.size() && i < width.size(); ++i)
            width[i] = std::max(width[i], r.cells[i].size());
    }
    std::printf("\n   %-*s", int(label), "");
    for (std::size_t i = 0; i < columns.size(); ++i)
        std::printf("   %*s", int(width[i]), columns[i].c_str());
    std::printf("\n");
    for (const Row &r : rows) {
        std::printf("   %-*s", int(label), r.name);
        for (std::size_t i = 0; i < width.size(); ++i)
            std::printf("   %*s", int(width[i]), i < r.cells.size() ? r.cells[i].c_str() : "");
        std::printf("\n");
    }
}

}  // namespace stampede
