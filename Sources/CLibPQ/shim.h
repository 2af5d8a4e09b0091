#ifndef ORDERPIPELINE_CLIBPQ_SHIM_H
#define ORDERPIPELINE_CLIBPQ_SHIM_H
// libpq's client API (Debian: libpq-dev, /usr/include/postgresql/libpq-fe.h; pkg-config adds the path).
#include <libpq-fe.h>
#endif
