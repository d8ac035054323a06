// The one header that includes the generated protobuf code. Internal: only
// .cpp files (and tests) include it, so public headers stay free of .pb.h.
#pragma once

#include "liaison/v1/frames.pb.h"    // IWYU pragma: export
#include "liaison/v1/messages.pb.h"  // IWYU pragma: export
#include "liaison/v1/options.pb.h"   // IWYU pragma: export
