/* The few MPI calls `ddpm` makes, behind a C ABI that is the same for every MPI implementation
 * (MPI's handles are pointers in Open MPI and integers in MPICH, so Rust cannot declare them
 * portably). Every call returns MPI_SUCCESS (0) or an MPI error code; errors are returned, not
 * fatal, so the caller can report them. Built with the implementation's own `mpicc`. */
#include <limits.h>
#include <mpi.h>
#include <stdint.h>

static MPI_Comm local_comm = MPI_COMM_NULL;

int ddpm_mpi_init(int *rank, int *size, int *local_rank, int *local_size) {
    int provided = 0;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return rc;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    if ((rc = MPI_Comm_rank(MPI_COMM_WORLD, rank)) != MPI_SUCCESS) return rc;
    if ((rc = MPI_Comm_size(MPI_COMM_WORLD, size)) != MPI_SUCCESS) return rc;
    rc = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, *rank, MPI_INFO_NULL,
                             &local_comm);
    if (rc != MPI_SUCCESS) return rc;
    if ((rc = MPI_Comm_rank(local_comm, local_rank)) != MPI_SUCCESS) return rc;
    return MPI_Comm_size(local_comm, local_size);
}

/* In-place sums over all ranks, in pieces of at most INT_MAX elements. */
int ddpm_mpi_allreduce_sum_f32(float *buf, int64_t n) {
    for (int64_t off = 0; off < n; off += INT_MAX) {
        int count = (int)(n - off < INT_MAX ? n - off : INT_MAX);
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
    }
    return MPI_SUCCESS;
}

int ddpm_mpi_allreduce_sum_f64(double *buf, int64_t n) {
    for (int64_t off = 0; off < n; off += INT_MAX) {
        int count = (int)(n - off < INT_MAX ? n - off : INT_MAX);
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
    }
    return MPI_SUCCESS;
}

/* The minimum and maximum of one value over all ranks. */
int ddpm_mpi_minmax_u64(uint64_t value, uint64_t *min, uint64_t *max) {
    int rc = MPI_Allreduce(&value, min, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return rc;
    return MPI_Allreduce(&value, max, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
}

int ddpm_mpi_barrier(void) { return MPI_Barrier(MPI_COMM_WORLD); }

void ddpm_mpi_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

int ddpm_mpi_finalize(void) {
    if (local_comm != MPI_COMM_NULL) MPI_Comm_free(&local_comm);
    return MPI_Finalize();
}

void ddpm_mpi_error_string(int code, char *out, int len) {
    int n = 0;
    char msg[MPI_MAX_ERROR_STRING];
    if (MPI_Error_string(code, msg, &n) != MPI_SUCCESS) n = 0;
    if (len <= 0) return;
    if (n >= len) n = len - 1;
    for (int i = 0; i < n; i++) out[i] = msg[i];
    out[n] = 0;
}
